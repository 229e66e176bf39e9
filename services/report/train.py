"""Train KiUT or an ablation on rendered radiographs paired with Open-i reports.

    python -m services.report.train                      # KiUT → services/report/checkpoints/kiut/
    python -m services.report.train --variant plain      # transformer captioner without knowledge, no U
    python -m services.report.train --variant no_u       # KiUT without the U-connection

One thread, seeded; the checkpoint folder gets ``model.pt`` (weights + buffers: symptom graph and the
knowledge base of training reports), ``config.json`` (model and training settings, data versions) and
``metrics.json`` (per-epoch losses, validation finding AUROC, wall time).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from services.report import data
from services.report.findings import FINDINGS
from services.report.graph import adjacency
from services.report.model import KiUT, KiUTConfig
from services.report.reports import PAD, Vocabulary, padchest_label_vectors

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).with_name("checkpoints")
KB_LEN = 42  # tokens kept per knowledge-base report
VARIANTS = {
    "kiut": KiUTConfig(),
    "plain": KiUTConfig(knowledge=False, u_connection=False),
    "no_u": KiUTConfig(u_connection=False),
}


def checkpoint_dir(variant: str = "kiut") -> Path:
    return CHECKPOINTS / variant


def build(vocab_size: int, graph: np.ndarray, kb_tokens: np.ndarray, kb_labels: np.ndarray,
          config: KiUTConfig) -> KiUT:
    return KiUT(vocab_size, graph, kb_tokens, kb_labels, config)


def load(variant: str = "kiut", directory: Path | None = None) -> tuple[KiUT, Vocabulary, dict]:
    """The trained model in eval mode, its vocabulary and its config.json."""
    directory = directory or checkpoint_dir(variant)
    config = json.loads((directory / "config.json").read_text())
    vocab = Vocabulary.load(directory / "vocab.json")
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    cfg = KiUTConfig(**config["model"])
    kb_tokens = state.get("kb_tokens", torch.zeros(cfg.retrieved, KB_LEN, dtype=torch.long)).numpy()
    kb_keys = state.get("kb_keys", torch.zeros(cfg.retrieved, len(FINDINGS))).numpy()
    model = build(len(vocab), np.asarray(config["graph"], np.float32), kb_tokens, kb_keys, cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.eval(), vocab, config


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def validate(model: KiUT, images: np.ndarray, tokens: np.ndarray, labels: np.ndarray, batch: int = 64) -> dict:
    model.eval()
    losses, probs = [], []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch].astype(np.float32)[:, None] / 255.0)
        t = torch.from_numpy(tokens[s:s + batch])
        logits, finding_logits = model(x, t[:, :-1])
        losses.append(F.cross_entropy(logits.transpose(1, 2), t[:, 1:], ignore_index=PAD, reduction="sum").item()
                      / max(int((t[:, 1:] != PAD).sum()), 1) * len(x))
        probs.append(torch.sigmoid(finding_logits).numpy())
    p = np.concatenate(probs)
    aucs = {name: _auroc(p[:, i], labels[:, i]) for i, name in enumerate(FINDINGS)}
    valid = [a for a in aucs.values() if a is not None]
    return {"token_loss": float(np.sum(losses) / len(images)), "finding_auroc": aucs,
            "finding_auroc_mean": float(np.mean(valid)) if valid else None}


def train(variant: str = "kiut", epochs: int = 8, batch_size: int = 32, lr: float = 5e-4, seed: int = 0,
          out: Path | None = None, finding_weight: float = 1.0, max_steps: int | None = None,
          val_limit: int | None = None, init: Path | None = None) -> dict:
    """Train one variant; ``max_steps`` per epoch and ``val_limit`` shorten smoke runs."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    corpus = data.Corpus.load()
    bank, combos = data.train_bank(corpus.splits["train"])
    val_images = data.eval_images(corpus.splits["val"], "val")[:val_limit]
    pairs = data.TrainPairs(corpus, bank, combos)
    graph = adjacency(corpus.labels("train"), padchest_label_vectors())
    kb_tokens = corpus.tokens("train", KB_LEN)
    kb_labels = corpus.labels("train")
    config = VARIANTS[variant]
    model = build(len(corpus.vocab), graph, kb_tokens, kb_labels, config)
    if init is not None:  # continue from a checkpoint of the same variant (same vocabulary and knowledge base)
        model.load_state_dict(torch.load(init / "model.pt", map_location="cpu", weights_only=True))
    data_s = time.perf_counter() - started
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    per_epoch = (len(pairs) + batch_size - 1) // batch_size
    steps = epochs * (min(per_epoch, max_steps) if max_steps else per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history = []
    best, best_state = float("inf"), None
    val_tokens, val_labels = corpus.tokens("val")[:val_limit], corpus.labels("val")[:val_limit]
    for epoch in range(epochs):
        model.train()
        t0, total, count = time.perf_counter(), 0.0, 0
        for step, (idx, images, tokens, labels) in enumerate(pairs.epoch(rng, batch_size)):
            if max_steps is not None and step >= max_steps:
                break
            length = int((tokens != PAD).sum(1).max())
            tok = torch.from_numpy(tokens[:, :length])
            exclude = torch.from_numpy(idx.astype(np.int64))
            logits, finding_logits = model(torch.from_numpy(images), tok[:, :-1], exclude=exclude)
            loss = F.cross_entropy(logits.transpose(1, 2), tok[:, 1:], ignore_index=PAD)
            loss = loss + finding_weight * F.binary_cross_entropy_with_logits(finding_logits, torch.from_numpy(labels))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        metrics = validate(model, val_images, val_tokens, val_labels)
        history.append({"epoch": epoch + 1, "train_loss": total / count, "seconds": time.perf_counter() - t0,
                        **{k: metrics[k] for k in ("token_loss", "finding_auroc_mean")}})
        log.info("%s epoch %d: %s", variant, epoch + 1, history[-1])
        if metrics["token_loss"] < best:
            best, best_state = metrics["token_loss"], {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_metrics = metrics
    model.load_state_dict(best_state)
    out = out or checkpoint_dir(variant)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(best_state, out / "model.pt")
    corpus.vocab.save(out / "vocab.json")
    wall = time.perf_counter() - started
    config_doc = {
        "variant": variant, "model": config.as_dict(), "graph": graph.round(5).tolist(),
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": 1,
                     "finding_weight": finding_weight, "optimizer": "AdamW wd 0.01, one-cycle",
                     "kb_reports": len(kb_tokens), "kb_tokens": KB_LEN},
        "data": {"reports": "Open-i NLMCXR_reports.tgz (torchxrayvision 1.5.7), FINDINGS sections, split by id "
                            "70/10/20 (reports.split_of, seed 0)",
                 "images": f"DRR generator v{data.GENERATOR_VERSION}: {len(bank)} training-bank images "
                           f"(seeds {data.TRAIN_SEEDS}+), validation/test one per report (seeds {data.EVAL_SEEDS}+)",
                 "train_reports": len(pairs), "val_reports": len(val_images), "vocab": len(corpus.vocab)},
        "command": f"python -m services.report.train --variant {variant} --epochs {epochs} --seed {seed}"
                   + (f" --init {init}" if init else ""),
    }
    (out / "config.json").write_text(json.dumps(config_doc, indent=1))
    result = {"history": history, "best_val": best_metrics, "wall_s": round(wall, 1), "data_s": round(data_s, 1),
              "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="kiut")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="per epoch (smoke runs)")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint folder to continue from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = train(args.variant, args.epochs, args.batch_size, args.lr, args.seed, args.out,
                   max_steps=args.max_steps, init=args.init)
    log.info("done in %.0f s; best validation %s", result["wall_s"], result["best_val"]["token_loss"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

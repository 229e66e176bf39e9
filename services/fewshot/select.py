"""Choose the feature-level methods' hyper-parameters on the support pools only (never the test images).

    python -m services.fewshot.select [--out services/fewshot/checkpoints/selection.json]

For each task × encoder: support sets drawn from the pool with seeds 100–102 (the evaluation uses 0–9), scored
on up to 600 other pool images; linear probe ``C`` ∈ {0.1, 1, 10, 100} × support-mean centring on/off, prototype
centring on/off; mean of the task's AUROC over 1/5/10 shots and the three draws.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from services.fewshot import adapt as A
from services.fewshot import encoders, protocol, tasks
from services.fewshot.heads import Head, apply

log = logging.getLogger(__name__)
SEEDS = (100, 101, 102)
HELD = 600


def score_pool(task: tasks.Task, encoder: str, feats: np.ndarray) -> dict[str, dict]:
    variants = {f"linear C={c} center={m}": ("linear", {"c": c, "center": m})
                for c in (0.1, 1.0, 10.0, 100.0) for m in (False, True)}
    variants |= {f"prototype center={m}": ("prototype", {"center": m}) for m in (False, True)}
    out: dict[str, dict] = {name: {} for name in variants}
    for n in tasks.SHOTS:
        for seed in SEEDS:
            idx = tasks.draw_support(task, n, seed)
            rest = np.setdiff1d(np.arange(len(feats)), idx)
            rest = np.sort(np.random.default_rng(seed).choice(rest, min(HELD, len(rest)), replace=False))
            for name, (method, kw) in variants.items():
                fit = A.fit_linear if method == "linear" else A.fit_prototype
                extra = {"seed": seed} if method == "linear" else {}
                arrays = fit(feats[idx], task.pool_labels[idx], task.multi_label, **extra, **kw)
                head = Head(method, encoder, task.class_names, task.multi_label, arrays)
                m = protocol.metrics(apply(head, feats[rest]), task.pool_labels[rest], task.multi_label)
                out[name].setdefault(n, []).append(m["auc"])
    return {name: {"auc_by_shots": {n: round(float(np.mean(v)), 4) for n, v in r.items()},
                   "auc_mean": round(float(np.mean([np.mean(v) for v in r.values()])), 4)} for name, r in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/fewshot/selection.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    result = {}
    for name, encoder in (("chest-findings", "chest"), ("chest-findings", "chest-vlm"), ("ct-organs", "ct")):
        if encoder == "chest-vlm" and not (encoders.vlm_checkpoint() / "model.pt").exists():
            continue
        task = tasks.TASKS[name]()
        feats = encoders.features(encoder, task.pool_images)
        result[f"{name} / {encoder}"] = score_pool(task, encoder, feats)
        log.info("%s / %s: %s", name, encoder, json.dumps(result[f"{name} / {encoder}"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

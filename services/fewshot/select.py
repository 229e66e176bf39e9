"""Choose the feature-level methods' hyper-parameters on the support pools only (never the test images).

    python -m services.fewshot.select              # linear C / centring → .cache/fewshot/selection.json
    python -m services.fewshot.select --adapted    # trained methods' lrs → .cache/fewshot/selection_adapted.json

For each task × encoder: support sets drawn from the pool with seeds 100–102 (the evaluation uses 0–9), scored
on up to 600 other pool images; linear probe ``C`` ∈ {0.1, 1, 10, 100} × support-mean centring on/off, prototype
centring on/off; mean of the task's AUROC over 1/5/10 shots and the three draws.

``--adapted``: the trained methods' learning rates on the chest pool (support seeds 100–101, 5 and 10 shots,
600 other pool images): ConES lr ∈ {1e-4, 3e-4, 1e-3, 1e-2}, CoOp context lr ∈ {1e-3, 2e-3, 5e-3} (seed 100 only:
CoOp is the slow one), input-prompt (prompt lr, head lr) ∈ {(2e-2, 5e-2), (1e-3, 5e-3), (3e-4, 2e-3)} at 10 shots;
zero-shot and the linear probe on the same draws for reference.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from services.fewshot import adapt as A
from services.fewshot import encoders, networks, protocol, tasks
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


def score_adapted(task: tasks.Task) -> dict[str, dict]:
    """Pool-only validation of the trained methods' learning rates (module constants of ``adapt`` set in turn)."""
    def pool_eval(encoder: str, method: str, seeds: tuple[int, ...], shots: tuple[int, ...]) -> dict:
        out, secs = [], []
        for n in shots:
            for s in seeds:
                idx = tasks.draw_support(task, n, s)
                rest = np.setdiff1d(np.arange(len(task.pool_images)), idx)
                rest = np.sort(np.random.default_rng(s).choice(rest, min(HELD, len(rest)), replace=False))
                head = A.adapt(encoder, method, task.class_names, task.pool_images[idx], task.pool_labels[idx],
                               task.multi_label, s)
                f = networks.features(encoder, task.pool_images[rest], prompt=head.prompt)
                out.append(protocol.metrics(apply(head, f), task.pool_labels[rest], task.multi_label)["auc"])
                secs.append(head.meta["adaptation_seconds"])
        return {"auc_mean": round(float(np.mean(out)), 4), "auc_per_draw": [round(x, 4) for x in out],
                "seconds_mean": round(float(np.mean(secs)), 2), "shots": list(shots), "seeds": list(seeds)}

    saved = (A.CONES_LR, A.COOP_LR, A.PROMPT_LR, A.PROMPT_HEAD_LR)
    out: dict[str, dict] = {}
    try:
        for method in ("zeroshot", "linear"):
            out[f"chest-vlm {method}"] = pool_eval("chest-vlm", method, (100, 101), (5, 10))
        for lr in (1e-4, 3e-4, 1e-3, 1e-2):
            A.CONES_LR = lr
            out[f"chest-vlm cones lr={lr}"] = pool_eval("chest-vlm", "cones", (100, 101), (5, 10))
        for lr in (1e-3, 2e-3, 5e-3):
            A.COOP_LR = lr
            out[f"chest-vlm coop lr={lr}"] = pool_eval("chest-vlm", "coop", (100,), (5, 10))
        out["chest linear"] = pool_eval("chest", "linear", (100, 101), (10,))
        for plr, hlr in ((2e-2, 5e-2), (1e-3, 5e-3), (3e-4, 2e-3)):
            A.PROMPT_LR, A.PROMPT_HEAD_LR = plr, hlr
            out[f"chest prompt lr={plr} head_lr={hlr}"] = pool_eval("chest", "prompt", (100, 101), (10,))
    finally:
        A.CONES_LR, A.COOP_LR, A.PROMPT_LR, A.PROMPT_HEAD_LR = saved
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="default .cache/fewshot/selection.json (selection_adapted.json with --adapted)")
    parser.add_argument("--adapted", action="store_true", help="the trained methods' learning rates instead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    args.out = args.out or Path(".cache/fewshot") / ("selection_adapted.json" if args.adapted else "selection.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.adapted:
        result = score_adapted(tasks.chest_findings())
        log.info("%s", json.dumps(result))
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return
    result = {}
    for name, encoder in (("chest-findings", "chest"), ("chest-findings", "chest-vlm"), ("ct-organs", "ct")):
        if encoder == "chest-vlm" and not (encoders.vlm_checkpoint() / "model.pt").exists():
            continue
        task = tasks.TASKS[name]()
        feats = networks.features(encoder, task.pool_images)
        result[f"{name} / {encoder}"] = score_pool(task, encoder, feats)
        log.info("%s / %s: %s", name, encoder, json.dumps(result[f"{name} / {encoder}"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

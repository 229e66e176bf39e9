"""MedFMC's few-shot protocol on a task: every method × shots × support draw, scored on the task's test images.

    rows = run(tasks.chest_findings(), "chest-vlm", methods=("linear", "cones"), shots=(1, 5, 10), seeds=range(10))

Each row: task, encoder, method, shots, seed, support size, adaptation seconds (``adapt.adapt``'s wall time,
support features included) and metrics: multi-label mAP + mean per-class AUROC; multi-class accuracy + macro
one-vs-rest AUROC. Zero-shot has no support: it is adapted once (no images) and repeated for every draw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np

from services.fewshot import adapt as A
from services.fewshot import networks
from services.fewshot.heads import apply
from services.fewshot.tasks import Task, draw_support

log = logging.getLogger(__name__)


def metrics(scores: np.ndarray, labels: np.ndarray, multi_label: bool) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if multi_label:
        cols = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
        ap = [average_precision_score(labels[:, j], scores[:, j]) for j in cols]
        auc = [roc_auc_score(labels[:, j], scores[:, j]) for j in cols]
        return {"map": float(np.mean(ap)), "auc": float(np.mean(auc)),
                "auc_per_class": [round(float(a), 4) for a in auc]}
    present = np.unique(labels)
    if len(present) > 2:
        auc = roc_auc_score(labels, scores[:, present] / scores[:, present].sum(1, keepdims=True), multi_class="ovr",
                            labels=present)
    else:
        auc = roc_auc_score(labels == present[1], scores[:, present[1]])
    return {"accuracy": float((scores.argmax(1) == labels).mean()), "auc": float(auc)}


def run(task: Task, encoder: str, methods: Iterable[str], shots: Iterable[int], seeds: Iterable[int]) -> list[dict]:
    test_feats = networks.features(encoder, task.test_images)
    rows = []
    for method in methods:
        zero = None
        for n in shots:
            for seed in seeds:
                if method == "zeroshot":  # no support: one head for every draw
                    if zero is None:
                        zero = A.adapt(encoder, method, task.class_names, task.pool_images[:0], task.pool_labels[:0],
                                       task.multi_label, seed=0)
                    head, idx = zero, np.zeros(0, np.int64)
                else:
                    idx = draw_support(task, n, seed)
                    head = A.adapt(encoder, method, task.class_names, task.pool_images[idx], task.pool_labels[idx],
                                   task.multi_label, seed=seed)
                feats = test_feats if head.prompt is None else networks.features(encoder, task.test_images,
                                                                                 prompt=head.prompt)
                m = metrics(apply(head, feats), task.test_labels, task.multi_label)
                rows.append({"task": task.name, "encoder": encoder, "method": method, "shots": n, "seed": seed,
                             "support": int(len(idx)), "seconds": head.meta["adaptation_seconds"], **m})
                log.info("%s %s %s %d-shot seed %d: %s (%.2f s)", task.name, encoder, method, n, seed,
                         {k: round(v, 4) for k, v in m.items() if isinstance(v, float)},
                         head.meta["adaptation_seconds"])
    return rows


def run_pixels(task: Task, shots: Iterable[int], seeds: Iterable[int], pool: int = 4) -> list[dict]:
    """The trivial baseline: the linear probe (C = 1, centred) on the encoder *input* average-pooled by ``pool``
    per axis (chest: 16×16 = 256 values; CT: 4×8×8 = 256), no foundation encoder at all."""
    import torch

    from services.fewshot.heads import Head

    def pooled(x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x)
        f = torch.nn.functional.avg_pool2d if t.dim() == 4 else torch.nn.functional.avg_pool3d
        k = 8 if t.dim() == 4 else pool
        return f(t, k).flatten(1).numpy()

    test, pool_x = pooled(task.test_images), pooled(task.pool_images)
    rows = []
    for n in shots:
        for seed in seeds:
            idx = draw_support(task, n, seed)
            t0 = time.perf_counter()
            head = Head("linear", "pixels", task.class_names, task.multi_label,
                        A.fit_linear(pool_x[idx], task.pool_labels[idx], task.multi_label, seed, c=1.0, center=True))
            seconds = time.perf_counter() - t0
            m = metrics(apply(head, test), task.test_labels, task.multi_label)
            rows.append({"task": task.name, "encoder": "pixels", "method": "linear", "shots": n, "seed": seed,
                         "support": int(len(idx)), "seconds": round(seconds, 3), **m})
    return rows


def summarise(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """mean ± std over the draws of every (task, encoder, method, shots)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["encoder"], r["method"], r["shots"]), []).append(r)
    out = []
    for (task, encoder, method, n), rs in groups.items():
        entry = {"task": task, "encoder": encoder, "method": method, "shots": n, "draws": len(rs)}
        for k in (*keys, "seconds"):
            vals = np.array([r[k] for r in rs if k in r], dtype=np.float64)
            if vals.size:
                entry[k] = round(float(vals.mean()), 4)
                entry[f"{k}_std"] = round(float(vals.std()), 4)
        out.append(entry)
    return out

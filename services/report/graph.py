"""The symptom graph's edges: finding co-occurrence in Open-i (MeSH labels) and PadChest (radiologist labels).

Edge weight = positive pointwise mutual information of the two findings, averaged over the two sources,
scaled to [0, 1]; the diagonal is left to the GCN's self-loops.
"""

from __future__ import annotations

import numpy as np

from services.report.findings import NUM_FINDINGS


def ppmi(labels: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Positive PMI between label columns of a (rows, F) 0/1 matrix; (F, F) with a zero diagonal."""
    labels = np.asarray(labels, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != NUM_FINDINGS:
        raise ValueError(f"labels must be (rows, {NUM_FINDINGS}), got {labels.shape}")
    n = len(labels) + smoothing
    joint = (labels.T @ labels + smoothing / NUM_FINDINGS**2) / n
    marginal = (labels.sum(0) + smoothing / NUM_FINDINGS) / n
    pmi = np.log(joint / np.outer(marginal, marginal))
    out = np.clip(pmi, 0, None)
    np.fill_diagonal(out, 0)
    return out


def adjacency(openi_labels: np.ndarray, padchest_labels: np.ndarray | None = None) -> np.ndarray:
    """Symmetric (F, F) weights in [0, 1] from one or two label sources."""
    mats = [ppmi(openi_labels)] + ([ppmi(padchest_labels)] if padchest_labels is not None and len(padchest_labels)
                                   else [])
    a = np.mean(mats, axis=0)
    a = (a + a.T) / 2
    return (a / a.max() if a.max() > 0 else a).astype(np.float32)

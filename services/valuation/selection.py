"""Selection rules on data values: online (each epoch) and offline (a coreset), ../shared/METHODS.md §3b–c.

* `select_cluster`: KMeans (k = 10, random_state 0) on the grouped values; when the largest
  cluster holds more than half of the samples it is dropped, otherwise every sample is kept.
* `select_thresh`: values divided by their mean; keep `low < v < high` (0.1 and 50 online).
* `coreset`: a sample qualifies when its per-epoch value over that epoch's mean stayed within
  (0.1, 40) in at least 4 epochs; when more than 30 % qualify, a seeded random 30 % of them is taken.

All return boolean masks over the samples (`coreset` returns sorted indices).

Example::

    keep = select_thresh(gradnorm_1dim)            # (N,) bool
    lr_scale = keep.mean()                         # the epoch's learning rate is scaled by this
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from services.common.options import look_up
from services.valuation.values import GroupDims

__all__ = [
    "CoresetRule",
    "Method",
    "MethodSpec",
    "coreset",
    "in_band_counts",
    "select_cluster",
    "select_thresh",
]


class Method(StrEnum):
    """Online selection methods with the public code's default pairing of value, grouping and rule."""

    DATA_SI = "data_si"
    GRADNORM = "gradnorm"

    @classmethod
    def parse(cls, value: str | Method) -> Method:
        return look_up(cls, value, "method")

    @property
    def spec(self) -> MethodSpec:
        return METHOD_SPECS[self]


@dataclass(frozen=True)
class MethodSpec:
    value: str  # "data_si" | "gradnorm"
    dims: GroupDims
    strategy: str  # "cluster" | "thresh"

    @property
    def config_string(self) -> str:
        return f"{self.value}&{self.dims.value}&{self.strategy}"


METHOD_SPECS = {
    Method.DATA_SI: MethodSpec("data_si", GroupDims.N_DIM, "cluster"),
    Method.GRADNORM: MethodSpec("gradnorm", GroupDims.ONE_DIM, "thresh"),
}


def _features(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"expected values of shape (N,) or (N, G) with N ≥ 1, got {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values contain NaN or infinity")
    return values


def select_cluster(
    values: np.ndarray, k: int = 10, max_fraction: float = 0.5, random_state: int = 0
) -> np.ndarray:
    """Keep-mask: drop the largest KMeans cluster when it holds more than `max_fraction` of the samples."""
    from sklearn.cluster import KMeans

    feats = _features(values)
    n = feats.shape[0]
    distinct = np.unique(feats, axis=0).shape[0]
    if n <= k or distinct < k:
        # too few distinct points for k clusters: group identical rows instead
        _, labels = np.unique(feats, axis=0, return_inverse=True)
    else:
        labels = KMeans(n_clusters=k, random_state=random_state, n_init="auto").fit_predict(feats)
    counts = np.bincount(labels.ravel())
    largest = int(np.argmax(counts))
    if counts[largest] > max_fraction * n:
        return labels.ravel() != largest
    return np.ones(n, dtype=bool)


def _relative(values: np.ndarray) -> np.ndarray:
    """Values over their mean, summed over groups first (the public code's norm over groups)."""
    feats = _features(values).sum(axis=1)
    mean = feats.mean()
    if mean <= 0:
        raise ValueError(f"threshold rules need a positive mean value, got {mean:g}")
    return feats / mean


def select_thresh(values: np.ndarray, low: float = 0.1, high: float = 50.0) -> np.ndarray:
    """Keep-mask: `low < value / mean < high`."""
    rel = _relative(values)
    return (rel > low) & (rel < high)


def in_band_counts(per_epoch: np.ndarray, low: float = 0.1, high: float = 40.0) -> np.ndarray:
    """For `(E, N)` per-epoch values: in how many epochs each sample had `low < v / epoch mean < high`."""
    per_epoch = np.asarray(per_epoch, dtype=np.float64)
    if per_epoch.ndim != 2:
        raise ValueError(f"expected per-epoch values (E, N), got {per_epoch.shape}")
    return np.sum([select_thresh(row, low, high) for row in per_epoch], axis=0).astype(np.int64)


@dataclass(frozen=True)
class CoresetRule:
    low: float = 0.1
    high: float = 40.0
    min_epochs: int = 4
    cap: float = 0.3


def coreset(per_epoch: np.ndarray, rule: CoresetRule | None = None, seed: int = 0) -> np.ndarray:
    """Sorted indices of the coreset from `(E, N)` per-epoch gradient norms (1-dim).

    With fewer than `rule.min_epochs` epochs recorded, every recorded epoch must be in the band.
    """
    rule = rule or CoresetRule()
    counts = in_band_counts(per_epoch, rule.low, rule.high)
    need = min(rule.min_epochs, np.asarray(per_epoch).shape[0])
    chosen = np.flatnonzero(counts >= need)
    cap = int(np.floor(rule.cap * counts.shape[0]))
    if chosen.size > cap:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, size=cap, replace=False))
    return chosen

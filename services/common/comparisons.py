"""What a family's held-out evaluation returns: its model beside the trivial baselines, with intervals.

A family registers its evaluation in ``services/<family>/evaluation.py`` as ``EVALUATION``, a
:class:`FamilyEvaluation`; ``medstack evaluate`` finds it, runs it (full, and the ``--quick``
slice that ``make test`` guards), and writes ``docs/results/<family>.json``.

Every comparison is *paired*: ours and the baseline are scored on the same samples (the same
structures, reports, turns, seeds), and ``ci95`` is a bootstrap interval of the mean of the
per-sample differences ``ours - baseline``. One sample gives no interval (``None``), except for a mask
on one volume, where `slice_bootstrap_ci95` resamples its axial slices (uncertainty within that volume,
not from patient to patient).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000


def paired_ci95(ours: Sequence[float], baseline: Sequence[float], seed: int = 0) -> list[float] | None:
    """95 % bootstrap interval of mean(ours - baseline) over paired samples; None below two samples.

    >>> paired_ci95([0.8, 0.9, 0.7], [0.5, 0.6, 0.6])  # doctest: +SKIP
    [0.1333, 0.3333]
    """
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape} vs {b.shape}")
    finite = np.isfinite(a) & np.isfinite(b)
    diff = (a - b)[finite]
    if diff.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(BOOTSTRAP_RESAMPLES, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def slice_counts(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per slice along the first axis of two 3-D boolean masks: overlap, predicted and true voxels, (3, Z)."""
    m, t = np.asarray(mask, bool), np.asarray(truth, bool)
    if m.shape != t.shape or m.ndim != 3:
        raise ValueError(f"need two 3-D masks of one shape, got {m.shape} and {t.shape}")
    return np.stack([(m & t).sum(axis=(1, 2)), m.sum(axis=(1, 2)), t.sum(axis=(1, 2))]).astype(np.int64)


def counts_dice(counts: np.ndarray) -> float:
    """3-D Dice from `slice_counts` (3, Z), or the mean over seeds of a stack of them (S, 3, Z); NaN when
    every mask and truth is empty."""
    overlap, predicted, true = np.asarray(counts).reshape(-1, 3, counts.shape[-1]).sum(axis=-1).T
    total = predicted + true
    if not total.any():
        return float("nan")
    return float(np.mean(2.0 * overlap[total > 0] / total[total > 0]))


def informative_slices(*counts: np.ndarray) -> np.ndarray:
    """Boolean (Z,): slices where any of the masks or the truth in ``counts`` ((3, Z) or (S, 3, Z)) is non-empty."""
    stack = np.concatenate([np.asarray(c).reshape(-1, 3, c.shape[-1]) for c in counts])
    return stack[:, 1:].sum(axis=(0, 1)) > 0


def slice_bootstrap_ci95(ours: np.ndarray, baseline: np.ndarray, seed: int = 0) -> list[float] | None:
    """95 % interval of the 3-D Dice difference ours - baseline on one volume (`slice_counts` of each against
    the same truth, (3, Z) or one per training seed (S, 3, Z), Dice then the mean over seeds) when its slices
    are resampled with replacement, the same resample for both; slices where every mask is empty are left out
    (they carry no information). None when no slice is left."""
    a, b = (np.asarray(c).reshape(-1, 3, c.shape[-1]) for c in (ours, baseline))
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"slice counts differ in length: {a.shape[-1]} vs {b.shape[-1]}")
    keep = informative_slices(a, b)
    a, b = a[..., keep], b[..., keep]
    n = a.shape[-1]
    if n == 0:
        return None
    index = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))

    def dice(stack: np.ndarray) -> np.ndarray:  # (S, 3, n) → mean over seeds per resample
        sums = stack[:, :, index].sum(axis=-1)  # (S, 3, resamples)
        total = sums[:, 1] + sums[:, 2]
        return np.where(total > 0, 2.0 * sums[:, 0] / np.maximum(total, 1), 0.0).mean(axis=0)

    low, high = np.percentile(dice(a) - dice(b), [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


@dataclass(frozen=True)
class Comparison:
    """One metric of our model beside one baseline, on the same samples.

    ``samples`` says what was resampled for ``ci95`` (e.g. "18 structures x 20 queries").
    ``tolerance``: the regression guard's allowance for this metric when it differs from the
    family's (e.g. a distance in mm beside Dice figures); None uses the family's.
    """

    name: str
    metric: str
    higher_is_better: bool
    ours: float
    baseline_name: str
    baseline: float
    seeds: list[int]
    ci95: list[float] | None
    samples: str
    tolerance: float | None = None

    @property
    def ours_wins(self) -> bool:
        return self.ours > self.baseline if self.higher_is_better else self.ours < self.baseline

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ours_wins": self.ours_wins}


def compare(name: str, metric: str, *, ours: Sequence[float], baseline: Sequence[float], baseline_name: str,
            higher_is_better: bool = True, seeds: Sequence[int] = (0,), samples: str = "",
            tolerance: float | None = None) -> Comparison:
    """A :class:`Comparison` from paired per-sample scores (means over the finite pairs)."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"{name}: need the same non-zero number of samples, got {a.size} and {b.size}")
    finite = np.isfinite(a) & np.isfinite(b)
    return Comparison(
        name=name, metric=metric, higher_is_better=higher_is_better,
        ours=round(float(a[finite].mean()), 4), baseline_name=baseline_name, baseline=round(float(b[finite].mean()), 4),
        seeds=list(seeds), ci95=paired_ci95(a[finite], b[finite]), samples=samples or f"{int(finite.sum())} samples",
        tolerance=tolerance,
    )


@dataclass
class FamilyResult:
    """What one run of a family's evaluation found.

    ``data``: what was evaluated and why the model never saw it in training. ``details``: anything
    else worth keeping (per-structure tables, example texts); written to the JSON as is.
    """

    data: str
    seeds: list[int]
    comparisons: list[Comparison]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilyEvaluation:
    """A family's registered evaluation.

    ``run(quick)`` evaluates the served model and its baselines in one run; with ``quick`` it runs
    a small deterministic slice (seconds, not minutes) whose figures are recorded beside the full
    ones, so the regression guard compares like with like. ``tolerance``: how far (absolute, in the
    metric's units) a quick figure may fall below the recorded one before the guard fails.
    ``served_models``: the Triton models whose weights the evaluation scores (recorded in the JSON).
    """

    family: str
    run: Callable[[bool], FamilyResult]
    tolerance: float = 0.02
    served_models: tuple[str, ...] = ()

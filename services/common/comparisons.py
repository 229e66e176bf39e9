"""What a family's held-out evaluation returns: its model beside the trivial baselines, with intervals.

A family registers its evaluation in ``services/<family>/evaluation.py`` as ``EVALUATION``, a
:class:`FamilyEvaluation`; ``medstack evaluate`` finds it, runs it (full, and the ``--quick``
slice that ``make test`` guards), and writes ``docs/results/<family>.json``.

Every comparison is *paired*: ours and the baseline are scored on the same samples (the same
structures, reports, turns, seeds), and ``ci95`` is a bootstrap interval of the mean of the
per-sample differences ``ours - baseline``. One sample gives no interval (``None``).
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

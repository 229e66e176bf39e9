"""The evaluation registry's arithmetic and bookkeeping (medstack evaluate), on made-up figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medstack import evaluate
from services.common.comparisons import compare, counts_dice, paired_ci95, slice_bootstrap_ci95, slice_counts


def test_paired_interval_brackets_the_mean_difference() -> None:
    ours, baseline = [0.8, 0.9, 0.7, 0.85, 0.75], [0.5, 0.6, 0.6, 0.55, 0.5]
    low, high = paired_ci95(ours, baseline)
    mean_diff = sum(o - b for o, b in zip(ours, baseline, strict=True)) / len(ours)
    assert low <= mean_diff <= high and low > 0


def test_one_sample_has_no_interval_and_lengths_must_match() -> None:
    assert paired_ci95([0.5], [0.4]) is None
    with pytest.raises(ValueError):
        paired_ci95([0.5, 0.6], [0.4])


def test_slice_counts_give_the_3d_dice_and_a_slice_bootstrap_interval() -> None:
    truth = np.zeros((8, 6, 6), bool)
    truth[1:7, 1:5, 1:5] = True
    shifted = np.roll(truth, 1, axis=2)  # 3 of 4 columns overlap on every slice
    counts = slice_counts(shifted, truth)
    assert counts.shape == (3, 8) and counts_dice(counts) == pytest.approx(0.75)
    assert math.isnan(counts_dice(slice_counts(np.zeros_like(truth), np.zeros_like(truth))))
    # a constant per-slice difference gives a degenerate interval at it; uneven slices a proper one
    assert slice_bootstrap_ci95(slice_counts(truth, truth), counts) == [0.25, 0.25]
    two_seeds = np.stack([slice_counts(truth, truth), counts])  # (seeds, 3, slices): Dice is the mean over seeds
    assert counts_dice(two_seeds) == pytest.approx(0.875)
    assert slice_bootstrap_ci95(two_seeds, np.stack([counts, counts])) == [0.125, 0.125]
    uneven = truth.copy()
    uneven[1:4] = False
    low, high = slice_bootstrap_ci95(slice_counts(truth, truth), slice_counts(uneven, truth))
    assert low < 1 / 3 < high
    assert slice_bootstrap_ci95(slice_counts(np.zeros_like(truth), np.zeros_like(truth)),
                                slice_counts(np.zeros_like(truth), np.zeros_like(truth))) is None
    with pytest.raises(ValueError, match="3-D masks"):
        slice_counts(truth[0], truth[0])


def test_compare_knows_which_direction_wins() -> None:
    lower = compare("wall distance", "mm", ours=[3.0, 4.0], baseline=[2.0, 2.5], baseline_name="copy",
                    higher_is_better=False)
    assert lower.ours == 3.5 and lower.baseline == 2.25 and not lower.ours_wins
    higher = compare("dice", "Dice", ours=[0.9, math.nan, 0.8], baseline=[0.5, 0.4, 0.6], baseline_name="atlas")
    assert higher.ours == pytest.approx(0.85) and higher.ours_wins and higher.samples == "2 samples"


def _recorded(ours: float, higher_is_better: bool = True, tolerance: float = 0.02) -> dict:
    comparison = compare("m", "x", ours=[ours, ours], baseline=[0.0, 0.0], baseline_name="b",
                         higher_is_better=higher_is_better)
    return {"quick": {"tolerance": tolerance, "comparisons": [comparison.as_dict()]}}


@pytest.mark.parametrize(("recorded", "now", "higher", "fails"), [
    (0.80, 0.79, True, False),   # within tolerance
    (0.80, 0.70, True, True),    # fell
    (0.80, 0.95, True, False),   # improved
    (3.0, 3.5, False, True),     # lower is better and it rose
    (3.0, 2.0, False, False),
])
def test_guard_fails_only_on_a_drop_beyond_tolerance(recorded: float, now: float, higher: bool, fails: bool) -> None:
    current = [compare("m", "x", ours=[now, now], baseline=[0.0, 0.0], baseline_name="b", higher_is_better=higher)]
    assert bool(evaluate.regressions("f", current, _recorded(recorded, higher))) is fails


def test_guard_fails_when_a_recorded_comparison_disappears_or_turns_nan() -> None:
    assert evaluate.regressions("f", [], _recorded(0.5))
    nan = compare("m", "x", ours=[0.5, 0.5], baseline=[0.0, 0.0], baseline_name="b")
    nan = type(nan)(**{**nan.__dict__, "ours": math.nan})
    assert evaluate.regressions("f", [nan], _recorded(0.5))


def test_table_marks_a_loss() -> None:
    document = {"command": "medstack evaluate f", "git_commit": "abc", "date": "2026-12-06", "family": "f",
                "data": "d", "comparisons": [compare("m", "x", ours=[0.1, 0.2], baseline=[0.5, 0.6],
                                                     baseline_name="copy").as_dict()]}
    row = evaluate.table(document).splitlines()[-1]
    assert row.startswith("| m | x ↑ | 0.15 | copy | 0.55 |") and row.endswith("**no** |")


@pytest.mark.parametrize(("ci95", "ours_wins", "expected"), [
    ([0.1, 0.3], True, "yes"), ([-0.1, 0.3], True, "yes (interval includes 0)"),
    ([-0.3, -0.1], False, "**no**"), ([-0.3, 0.1], False, "**no** (interval includes 0)"),
    ([-0.3, -0.1], True, "yes"),  # lower is better: ours − baseline below 0 is a decided win
    (None, True, "yes (no interval)"),
])
def test_verdict_says_when_the_interval_includes_zero(ci95: list[float] | None, ours_wins: bool,
                                                      expected: str) -> None:
    assert evaluate.verdict({"ci95": ci95, "ours_wins": ours_wins}) == expected


def test_unknown_family_names_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="registered"):
        evaluate.resolve(["no-such-family"])


def test_a_comparison_may_carry_its_own_tolerance() -> None:
    recorded = {"quick": {"tolerance": 0.01, "comparisons": [
        compare("hd95", "mm", ours=[10.0, 10.0], baseline=[9.0, 9.0], baseline_name="atlas",
                higher_is_better=False, tolerance=2.0).as_dict()]}}
    slightly_worse = [compare("hd95", "mm", ours=[11.0, 11.0], baseline=[9.0, 9.0], baseline_name="atlas",
                              higher_is_better=False)]
    assert not evaluate.regressions("f", slightly_worse, recorded)

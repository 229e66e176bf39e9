"""Selection rules on constructed value distributions: KMeans drop, thresholds, coreset."""

from __future__ import annotations

import numpy as np
import pytest

from services.valuation.selection import (
    CoresetRule,
    Method,
    coreset,
    in_band_counts,
    select_cluster,
    select_thresh,
)


def test_cluster_rule_drops_a_majority_cluster() -> None:
    rng = np.random.default_rng(0)
    # 700 near-identical "easy" samples around 0 and 300 spread over ten other places
    easy = rng.normal(0.0, 1e-3, size=(700, 3))
    rest = np.concatenate([rng.normal(10.0 * (k + 1), 0.1, size=(30, 3)) for k in range(10)])
    values = np.concatenate([easy, rest])
    keep = select_cluster(values)
    assert not keep[:700].any()
    assert keep[700:].all()


def test_cluster_rule_keeps_everything_without_a_majority_cluster() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10.0 * k, 0.1, size=(100, 2)) for k in range(10)])
    assert select_cluster(values).all()


def test_cluster_rule_boundary_is_strictly_more_than_half() -> None:
    # exactly half in one tight cluster: not dropped (the rule is "> 50 %")
    rng = np.random.default_rng(2)
    half = rng.normal(0, 1e-4, size=(500, 1))
    others = np.concatenate([rng.normal(5.0 * (k + 1), 0.01, size=(50, 1)) for k in range(10)])
    assert select_cluster(np.concatenate([half, others])).all()
    # one more sample in it: dropped
    values = np.concatenate([rng.normal(0, 1e-4, size=(501, 1)), others[:499]])
    keep = select_cluster(values)
    assert keep.sum() == 499 and not keep[:501].any()


def test_cluster_rule_is_deterministic_and_handles_tiny_sets() -> None:
    rng = np.random.default_rng(3)
    values = rng.gamma(1.0, size=(300, 4))
    np.testing.assert_array_equal(select_cluster(values), select_cluster(values))
    # fewer samples than clusters: identical rows form the clusters
    tiny = np.array([[0.0], [0.0], [0.0], [1.0], [2.0]])
    np.testing.assert_array_equal(select_cluster(tiny), [False, False, False, True, True])


def test_thresh_keeps_values_between_0_1_and_50_times_the_mean() -> None:
    values = np.array([0.05, 0.0999, 0.1001, 1.0, 49.99, 50.01, 0.0])
    values = np.append(values, values.size + 1 - values.sum())  # the last one sets the mean to 1
    assert np.isclose(values.mean(), 1.0, rtol=1e-12)
    keep = select_thresh(values)
    np.testing.assert_array_equal(keep[:7], [False, False, True, True, True, False, False])
    # the offline band is (0.1, 40)
    np.testing.assert_array_equal(select_thresh(values, high=40.0)[:7], [False, False, True, True, False, False, False])


def test_thresh_is_scale_free_and_sums_groups() -> None:
    rng = np.random.default_rng(4)
    values = rng.lognormal(0, 2, size=(1000, 3))
    np.testing.assert_array_equal(select_thresh(values), select_thresh(values * 1e-9))
    np.testing.assert_array_equal(select_thresh(values), select_thresh(values.sum(axis=1)))


def test_thresh_drops_outliers_and_near_zero_values() -> None:
    values = np.full(1000, 1.0)
    values[:100] = 1e-4  # learned: near-zero gradients
    values[-3:] = 400.0  # extreme outliers (e.g. mislabelled)
    keep = select_thresh(values)
    assert not keep[:100].any() and not keep[-3:].any() and keep[100:-3].all()


def test_rules_refuse_bad_values() -> None:
    with pytest.raises(ValueError):
        select_thresh(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="positive mean"):
        select_thresh(np.zeros(5))
    with pytest.raises(ValueError):
        select_cluster(np.zeros((0, 2)))


def test_in_band_counts_use_each_epochs_own_mean() -> None:
    per_epoch = np.array([[1.0, 1.0, 1.0, 97.0], [10.0, 10.0, 10.0, 10.0], [0.01, 1.0, 1.0, 1.0]])
    # epoch 0: mean 25, so 1.0 → 0.04 (out) and 97 → 3.88 (in); epoch 1: all 1.0 (in);
    # epoch 2: mean 0.7525, 0.01 → 0.013 (out), 1.0 → 1.33 (in)
    np.testing.assert_array_equal(in_band_counts(per_epoch), [1, 2, 2, 3])


def test_coreset_needs_four_epochs_in_band() -> None:
    n = 100
    per_epoch = np.ones((6, n))
    per_epoch[:3, :20] = 1e-6  # samples 0..19 in band only in epochs 3..5 (3 epochs)
    per_epoch[:, 20:30] = 1e-6  # 20..29 never in band
    chosen = coreset(per_epoch, CoresetRule(cap=1.0))
    np.testing.assert_array_equal(chosen, np.arange(30, n))


def test_coreset_is_capped_at_30_percent_by_a_seeded_draw() -> None:
    per_epoch = np.ones((5, 1000))
    a, b = coreset(per_epoch, seed=7), coreset(per_epoch, seed=7)
    assert a.size == 300 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, coreset(per_epoch, seed=8))


def test_coreset_with_fewer_epochs_than_required_needs_all_of_them() -> None:
    per_epoch = np.ones((2, 10))
    per_epoch[1, :4] = 1e-6
    np.testing.assert_array_equal(coreset(per_epoch, CoresetRule(cap=1.0)), np.arange(4, 10))


def test_method_names_and_paper_pairings() -> None:
    assert Method.DATA_SI.spec.config_string == "data_si&n-dim&cluster"
    assert Method.GRADNORM.spec.config_string == "gradnorm&1-dim&thresh"
    with pytest.raises(ValueError, match="gradnorm"):
        Method.parse("gradnrom")

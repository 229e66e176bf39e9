"""The whole valuation on a tiny set: outputs, resume after a crash, idempotent reruns, params."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.valuation.data import digits
from services.valuation.job import OUTPUTS, ParamsError, ValuationParams, job_summary, run_valuation

PARAMS = {"input": "input.npz", "epochs": 4, "seeds": 2, "width": 4, "batch_size": 32}


@pytest.fixture(scope="module")
def tiny():
    return digits().subsample(n_train=160, n_test=80, seed=0)


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("valuation")
    return out, run_valuation(tiny, out, ValuationParams.parse(PARAMS))


class Crash(Exception):
    pass


def _stable(report: dict) -> dict:
    """The report without timings."""
    return {name: {k: run[k] for k in ("accuracy", "kept_fraction", "sample_epochs", "kept_per_epoch",
                                         "test_accuracy_per_epoch")}
            for name, run in report["runs"].items()}


def test_outputs_and_their_contents(finished, tiny) -> None:
    out, report = finished
    assert all((out / name).is_file() for name in OUTPUTS)
    n = len(tiny.train())
    rows = list(csv.DictReader((out / "values.csv").open()))
    assert len(rows) == n and [r["id"] for r in rows] == list(tiny.train().ids)
    assert {"si_block1", "si_fc", "si_all", "gradnorm_block3", "gradnorm_all", "epochs_kept_data_si",
            "epochs_kept_gradnorm", "epochs_in_band", "in_coreset"} <= set(rows[0])
    assert all(float(r["gradnorm_all"]) > 0 for r in rows)
    values = json.loads((out / "values.json").read_text())
    assert values["groups"] == ["block1", "block2", "block3", "fc"] and len(values["rows"]) == n
    core = json.loads((out / "coreset.json").read_text())
    assert core["size"] <= 0.3 * n and core["size"] == sum(r["in_coreset"] == "1" for r in rows)
    assert set(core["ids"]) == {r["id"] for r in rows if r["in_coreset"] == "1"}
    assert report["seeds"] == [0, 1]
    assert set(report["runs"]) == {"full", "online_data_si", "online_gradnorm", "coreset", "random_subset"}
    for run in report["runs"].values():
        assert len(run["accuracy"]["per_seed"]) == 2 and 0 <= run["accuracy"]["mean"] <= 1
    assert report["runs"]["full"]["kept_fraction"]["mean"] == 1.0
    assert report["runs"]["coreset"]["kept_fraction"]["mean"] == pytest.approx(report["coreset_fraction"]["mean"])
    assert report["runs"]["random_subset"]["sample_epochs"] == report["runs"]["coreset"]["sample_epochs"]
    assert "held-out" in report["evaluated_on"]
    summary = job_summary(report)
    assert json.loads(json.dumps(summary)) == summary and summary["artifacts"] == list(OUTPUTS)


def test_a_rerun_resumes_nothing_and_rewrites_the_same_files(finished, tiny) -> None:
    out, report = finished
    before = {name: (out / name).read_bytes() for name in ("values.csv", "values.json", "coreset.json")}
    again = run_valuation(tiny, out, ValuationParams.parse(PARAMS))
    assert _stable(again) == _stable(report)
    assert {name: (out / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUTS, "work"])


def test_a_crash_mid_job_resumes_to_the_uninterrupted_result(finished, tiny, tmp_path: Path) -> None:
    _, reference = finished
    calls = {"n": 0}

    def crash_in_the_online_run(stage: str, fraction: float) -> None:
        calls["n"] += 1
        if "s1 gradnorm e3" in stage:
            raise Crash(stage)

    with pytest.raises(Crash):
        run_valuation(tiny, tmp_path, ValuationParams.parse(PARAMS), progress=crash_in_the_online_run)
    work = tmp_path / "work"
    assert (work / "seed0" / "random_subset" / "result.json").is_file()
    assert (work / "seed1" / "online_gradnorm" / "state.pt").is_file()
    assert not (work / "seed1" / "online_gradnorm" / "result.json").is_file()
    assert not (tmp_path / "report.json").exists()

    stages: list[str] = []
    resumed = run_valuation(tiny, tmp_path, ValuationParams.parse(PARAMS), progress=lambda s, f: stages.append(s))
    assert not any(s.startswith("s0 ") for s in stages)  # seed 0 is not redone
    assert not any("gradnorm e1/" in s for s in stages)  # nor the finished epochs of the interrupted run
    assert _stable(resumed) == _stable(reference)
    assert (tmp_path / "values.csv").read_bytes() == (finished[0] / "values.csv").read_bytes()


def test_changed_params_start_afresh(tiny, tmp_path: Path) -> None:
    one = {**PARAMS, "seeds": 1, "epochs": 2, "method": "gradnorm"}
    run_valuation(tiny, tmp_path, ValuationParams.parse(one))
    report = run_valuation(tiny, tmp_path, ValuationParams.parse({**one, "epochs": 3}))
    assert len(report["runs"]["full"]["kept_per_epoch"][0]) == 3
    assert set(report["runs"]) == {"full", "online_gradnorm", "coreset", "random_subset"}


def test_params_are_validated_with_hints() -> None:
    with pytest.raises(ParamsError) as err:
        ValuationParams.parse({"model_family": "resnet18", "epochs": 0, "method": "gradnrom", "colour": 1,
                               "input": "../etc/passwd"})
    message = str(err.value)
    for part in ("model_family", "resnet18_w", "epochs", "'gradnorm'", "colour", "input"):
        assert part in message
    p = ValuationParams.parse({"input": "input.npz", "task": "classification", "model_family": "resnet18_w",
                               "epochs": 5, "seed": 3, "method": "data_si"})
    assert p.train_config().family == "resnet18_w" and [m.value for m in p.methods()] == ["data_si"]
    assert p.run_names() == ["full", "online_data_si", "coreset", "random_subset"]
    assert np.isclose(ValuationParams.parse({"dataset": "digits", "optimizer": "adam"}).train_config().lr, 1e-3)
    assert ValuationParams.parse({"dataset": "organ-patches"}).dataset == "organ_patches"
    with pytest.raises(ParamsError, match="input"):
        ValuationParams.parse({"dataset": "upload"})
    # what the gateway sends today
    gateway = {"input": "input.zip", "dataset": "upload", "task": "classification", "model_family": "small_cnn",
               "epochs": 10, "seed": 0}
    assert ValuationParams.parse(gateway).input == "input.zip"


def test_the_thread_count_is_restored(tiny, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    run_valuation(tiny, tmp_path, ValuationParams.parse({**PARAMS, "seeds": 1, "epochs": 1, "threads": 1}))
    assert torch.get_num_threads() == before

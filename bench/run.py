"""`make bench`: every side-by-side benchmark once, then the plots and an overview in docs/benchmarks.md.

    .venv/bin/python -m bench.run                       # all of them (about 15–30 min on 2 busy cores)
    .venv/bin/python -m bench.run --skip worker_memory  # leave one out (names without "bench.")
    .venv/bin/python -m bench.run --plots-only          # redraw the plots from the results already there

Each benchmark is its own module and process and writes its own section of docs/benchmarks.md; this
runner runs the ones present, one after another (they would only disturb each other in parallel),
records how each went, and draws from the sections and result files:

* ``docs/img/perf_latency.png``, ``perf_split.png``: latency percentiles and throughput vs concurrency,
  dynamic batching on/off, shared memory vs gRPC (``bench.perf_analyzer``, also ``make perf``);
* ``docs/img/volume_runtimes.png``: a whole volume through Triton vs in-process runtimes (``bench.volume_job``);
* ``docs/img/gateway_overhead.png``: the same inference direct and through the gateway (``bench.gateway_overhead``);
* ``docs/img/load_timeline.png``: the last ``make load`` run, when there is one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import plots
from bench.report import markdown_table, number, order_sections, parse_table, read_section, write_section
from core.settings import REPO_ROOT

SECTION = "## Overview (make bench)"
IMG = REPO_ROOT / "docs" / "img"


@dataclass(frozen=True)
class Benchmark:
    module: str
    section: str
    what: str
    args: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.module.removeprefix("bench.")

    @property
    def present(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


BENCHMARKS = (
    Benchmark("bench.cpu_runtimes", "## CPU runtimes",
              "one batch: ONNX Runtime CPU vs OpenVINO fp32/bf16 (and the OpenVINO provider with --ep-python)"),
    Benchmark("bench.volume_job", "## Whole-volume segmentation",
              "one CT through Triton (OpenVINO fp32/bf16) vs in-process ONNX Runtime/OpenVINO and MONAI eager"),
    Benchmark("bench.worker_memory", "## Worker memory", "peak RSS of a job, 133 and 800 slices"),
    Benchmark("bench.gateway_overhead", "## Gateway overhead", "small inference direct to Triton vs via the gateway"),
    Benchmark("bench.per_sample_grads", "## Per-sample gradients (data valuation)", "torch.func vs a loop"),
    Benchmark("bench.perf_analyzer", "## Triton perf_analyzer (make perf)",
              "perf_analyzer concurrency sweep, batching on/off, shared memory"),
)



def log(message: str) -> None:
    sys.stdout.write(f"[bench] {message}\n")
    sys.stdout.flush()


def run_benchmark(bench: Benchmark, logs: Path) -> dict[str, object]:
    log_file = logs / f"{bench.name}.log"
    log(f"{bench.module} … (log {log_file.relative_to(REPO_ROOT)})")
    start = time.monotonic()
    with log_file.open("w") as out:
        code = subprocess.run([sys.executable, "-m", bench.module, *bench.args], cwd=REPO_ROOT,
                              stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    log(f"{bench.module}: exit {code} after {seconds:.0f} s")
    return {"benchmark": bench.module, "exit": code, "seconds": round(seconds), "log": str(log_file)}


# ---- plots from what the benchmarks wrote ------------------------------------------------------------


def plot_volume_runtimes() -> Path | None:
    section = read_section("## Whole-volume segmentation")
    rows = parse_table(section) if section else []
    rows = [r for r in rows if number(r.get("seconds", "")) is not None]
    if not rows:
        return None
    return plots.bars([r["variant"] for r in rows], {"seconds": [number(r["seconds"]) for r in rows]},
                      IMG / "volume_runtimes.png", "One CT volume, same windows: Triton vs in-process",
                      "seconds (best of the run)", note="ratio to in-process ONNX Runtime in the table")


def plot_gateway_overhead() -> Path | None:
    section = read_section("## Gateway overhead")
    rows = parse_table(section) if section else []
    rows = [r for r in rows if number(r.get("p50 (ms)", "")) is not None]
    if not rows:
        return None
    return plots.bars([r["path"] for r in rows],
                      {"p50": [number(r["p50 (ms)"]) for r in rows], "p95": [number(r["p95 (ms)"]) for r in rows]},
                      IMG / "gateway_overhead.png", "Small inference: direct to Triton vs through the gateway", "ms")


def plot_perf() -> list[Path]:
    results = REPO_ROOT / "docs" / "perf" / "results.json"
    if not results.exists():
        return []
    rows = json.loads(results.read_text())["rows"]
    return [plots.perf_latency(rows, IMG / "perf_latency.png"), plots.perf_split(rows, IMG / "perf_split.png")]


def plot_load() -> Path | None:
    history = REPO_ROOT / "docs" / "load" / "mixed_stats_history.csv"
    return plots.load_timeline(history, IMG / "load_timeline.png") if history.exists() else None


def draw_plots() -> list[Path]:
    drawn = [*plot_perf(), plot_volume_runtimes(), plot_gateway_overhead(), plot_load()]
    return [p for p in drawn if p is not None]


def overview(runs: list[dict[str, object]], drawn: list[Path], skipped: list[str]) -> str:
    lines = [
        SECTION, "",
        f"`make bench` (`python -m bench.run`), {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Each benchmark "
        "ran once, alone, in its own process, and wrote its own section below; the machine (2 cores) was shared "
        "with model training, so read ratios within a section, not absolute seconds.", "",
    ]
    if runs:
        lines += [markdown_table(["benchmark", "what", "exit", "seconds"],
                                 [[f"`{r['benchmark']}`", r["what"], r["exit"], r["seconds"]] for r in runs])]
    if skipped:
        lines += [f"Not run: {', '.join(skipped)}.", ""]
    names = {p.name for p in drawn}
    if "volume_runtimes.png" in names:
        lines += ["![whole volume: Triton vs in-process](img/volume_runtimes.png)", ""]
    if "gateway_overhead.png" in names:
        lines += ["![gateway overhead](img/gateway_overhead.png)", ""]
    lines += ["Plots of the perf_analyzer sweep and of the load run are in their own sections.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", nargs="*", default=[], help="benchmarks to leave out, e.g. worker_memory")
    parser.add_argument("--only", nargs="*", default=[], help="run only these")
    parser.add_argument("--plots-only", action="store_true", help="run nothing; redraw plots from existing results")
    args = parser.parse_args(argv)
    logs = REPO_ROOT / ".run" / "bench"
    logs.mkdir(parents=True, exist_ok=True)

    runs: list[dict[str, object]] = []
    skipped: list[str] = []
    for bench in BENCHMARKS:
        chosen = (not args.only or bench.name in args.only) and bench.name not in args.skip and not args.plots_only
        if not bench.present:
            skipped.append(f"`{bench.module}` (not in this checkout)")
        elif not chosen:
            skipped.append(f"`{bench.module}` (skipped in this run; its section below is from its own last run)")
        else:
            runs.append(run_benchmark(bench, logs) | {"what": bench.what})
    drawn = draw_plots()
    for path in drawn:
        log(f"plot {path.relative_to(REPO_ROOT)}")
    if runs:
        write_section(overview(runs, drawn, skipped))
        order_sections([SECTION, *(b.section for b in BENCHMARKS), "## Load (make load)"])
    failed = [r["benchmark"] for r in runs if r["exit"] != 0]
    if failed:
        log(f"failed: {', '.join(map(str, failed))} (logs in {logs.relative_to(REPO_ROOT)})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make perf`: Triton's perf_analyzer against the embedded Triton, for each served model.

    .venv/bin/python -m bench.perf_analyzer [--models reference_hutissue] [--concurrency 1:4]

perf_analyzer comes from the ``tritonclient==2.41.0`` manylinux1 wheel, which carries the binary in
its data folder (PyPI's ``perf-analyzer`` is an empty placeholder on this platform). It is fetched
into ``.cache/perf_analyzer/`` with its two missing libraries, never into a venv (the platform keeps
its own tritonclient): ``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12`` wheel and
``libb64.so.0d`` from Debian's ``libb64-0d`` (``apt-get download``, unpacked, not installed).

Per model, one Triton on free ports serves three variants of the same model version, and
perf_analyzer sweeps concurrency with requests of one patch of the manifest's ``patch_size``:

* ``batching``: the model as exported (dynamic batching on), tensors in the gRPC messages;
* ``no batching``: the same with ``dynamic_batching`` removed from its config;
* ``batching + shm``: as ``batching``, tensors through Triton's system shared memory (what the
  worker does when it runs on Triton's host).

Results: raw CSVs in ``docs/perf/``, plots in ``docs/img/``, and the "Triton perf_analyzer
(make perf)" section of docs/benchmarks.md. If the binary cannot run, that section says why.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.report import markdown_table, write_section
from core.settings import REPO_ROOT, settings
from core.triton import TritonServer, prepare_runtime
from export.manifest import latest_manifest
from medstack.stack import free_port

SECTION = "## Triton perf_analyzer (make perf)"
TOOL_DIR = REPO_ROOT / ".cache" / "perf_analyzer"
TRITONCLIENT = "tritonclient==2.41.0"
# tritonclient 2.41.0 is Triton 23.12, built against CUDA 12.3
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.3.101"
LIBB64_PACKAGE = "libb64-0d"
DTYPE_BYTES = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "uint8": 1}


class SkipModel(Exception):
    """A model this sweep has no request shape for."""


class PerfAnalyzerUnavailable(RuntimeError):
    """perf_analyzer could not be fetched or does not start; the message says what is missing."""


@dataclass(frozen=True)
class Tool:
    binary: Path
    lib_dirs: tuple[Path, ...]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*(str(d) for d in self.lib_dirs), env.get("LD_LIBRARY_PATH", "")])
        return env


def log(message: str) -> None:
    sys.stdout.write(f"[perf] {message}\n")
    sys.stdout.flush()


def _pip_download(requirement: str, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(target.glob(f"{name}-*.whl"))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--platform", "manylinux1_x86_64", "--python-version", "3.11", "-d", str(target), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(target.glob(f"{name}-*.whl"))
    if result.returncode != 0 or not found:
        raise PerfAnalyzerUnavailable(f"`pip download {requirement}` failed: {result.stderr.strip()[-400:]}")
    return found[0]


def _extract(wheel: Path, member_pattern: str, target: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if re.fullmatch(member_pattern, m)]
        if not members:
            raise PerfAnalyzerUnavailable(f"{wheel.name} has no {member_pattern}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(members[0]) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def _system_has(library: str) -> bool:
    result = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True)
    return library in result.stdout


def _libb64(folder: Path) -> Path | None:
    """Debian's libb64 unpacked here (no root, no install); None when the system already has it."""
    if _system_has("libb64.so.0d"):
        return None
    unpacked = folder / "libb64"
    lib = unpacked / "usr" / "lib" / "x86_64-linux-gnu"
    if (lib / "libb64.so.0d").exists():
        return lib
    debs = folder / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", LIBB64_PACKAGE], cwd=debs, capture_output=True, text=True)
    found = sorted(debs.glob(f"{LIBB64_PACKAGE}_*.deb"))
    if not found:
        raise PerfAnalyzerUnavailable(
            f"perf_analyzer needs libb64.so.0d: `apt-get download {LIBB64_PACKAGE}` failed "
            f"({result.stderr.strip()[-300:]}); install it "
            f"(`apt-get update && apt-get install {LIBB64_PACKAGE}`) and run again")
    subprocess.run(["dpkg-deb", "-x", str(found[0]), str(unpacked)], check=True)
    return lib


def fetch_tool(folder: Path = TOOL_DIR) -> Tool:
    """perf_analyzer and its libraries in ``folder``; downloads only what is not there yet."""
    binary = folder / "bin" / "perf_analyzer"
    if not binary.exists():
        wheel = _pip_download(TRITONCLIENT, folder / "wheels")
        _extract(wheel, r"tritonclient-[\d.]+\.data/data/bin/perf_analyzer", binary)
        binary.chmod(0o755)
    cudart = folder / "lib" / "libcudart.so.12"
    if not cudart.exists():
        _extract(_pip_download(CUDA_RUNTIME, folder / "wheels"), r"nvidia/cuda_runtime/lib/libcudart\.so\.12", cudart)
    lib_dirs = [cudart.parent]
    b64 = _libb64(folder)
    if b64 is not None:
        lib_dirs.append(b64)
    tool = Tool(binary, tuple(lib_dirs))
    missing = [line.strip() for line in subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                                                       env=tool.env()).stdout.splitlines() if "not found" in line]
    if missing:
        raise PerfAnalyzerUnavailable(f"perf_analyzer still lacks libraries: {'; '.join(missing)}")
    return tool


# ---- the served variants --------------------------------------------------------------------------


VARIANTS = (
    # name, model suffix, perf_analyzer extra arguments
    ("batching", "", []),
    ("no batching", "_nobatch", []),
    ("batching + shm", "", ["--shared-memory", "system"]),
)


def variant_repository(model: str, target: Path) -> None:
    """The model, and a copy named ``<model>_nobatch`` whose configs have no dynamic batching."""
    source = settings.model_repository / model
    shutil.copytree(source, target / model)
    copy = target / f"{model}_nobatch"
    shutil.copytree(source, copy)
    for config in copy.rglob("*.pbtxt"):
        text = config.read_text().replace(f'name: "{model}"', f'name: "{model}_nobatch"')
        config.write_text(re.sub(r"dynamic_batching \{[^}]*\}\n?", "", text))


def request_shape(manifest: dict[str, Any]) -> tuple[str, list[int], list[int]]:
    """(input name, input dims, output dims), without the batch axis, for one patch of the manifest.

    The trailing axes are spatial and take the patch size; the leading ones (channels, classes) are fixed.
    """
    patch = list(manifest["preprocessing"]["patch_size"])

    def fill(shape: list[int]) -> list[int]:
        lead = shape[1:-len(patch)]
        if any(d <= 0 for d in lead):
            raise ValueError(f"{manifest['model']}: a dynamic non-spatial axis in {shape}")
        return lead + patch

    return manifest["inputs"][0]["name"], fill(manifest["inputs"][0]["shape"]), fill(manifest["outputs"][0]["shape"])


def _bytes(shape: list[int], dtype: str) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BYTES.get(dtype, 4)


def run_level(tool: Tool, model: str, variant: str, extra: list[str], grpc_url: str, shape: list[int],
              input_name: str, output_bytes: int, concurrency: int, csv_path: Path,
              request_count: int) -> dict[str, Any] | None:
    """One concurrency level (a level that never stabilises must not end the sweep, as it does in one run)."""
    cmd = [
        str(tool.binary), "-m", model, "-u", grpc_url, "-i", "grpc", "-b", "1",
        "--shape", f"{input_name}:{','.join(map(str, shape))}",
        "--concurrency-range", f"{concurrency}:{concurrency}:1",
        "--measurement-mode", "count_windows", "--measurement-request-count", str(request_count),
        "--max-trials", "8", "--stability-percentage", "50", "-f", str(csv_path), *extra,
    ]
    if "--shared-memory" in extra:
        cmd += ["--output-shared-memory-size", str(output_bytes)]
    log(f"{variant}, concurrency {concurrency}: perf_analyzer {' '.join(cmd[1:])}")
    csv_path.unlink(missing_ok=True)
    result = subprocess.run(cmd, capture_output=True, text=True, env=tool.env(), timeout=600)
    csv_path.with_suffix(".txt").write_text(" ".join(cmd[1:]) + "\n\n" + result.stdout + result.stderr)
    if result.returncode != 0 and "stable" not in (result.stdout + result.stderr).lower():
        tail = (result.stdout + result.stderr).strip()[-1200:]
        raise PerfAnalyzerUnavailable(f"perf_analyzer exited with {result.returncode} on {model} ({variant}):\n{tail}")
    rows = parse_csv(csv_path, variant) if csv_path.exists() else []
    if not rows:
        log(f"{variant}, concurrency {concurrency}: no stable measurement (see {csv_path.with_suffix('.txt').name})")
        return None
    return rows[0]


def parse_csv(path: Path, variant: str) -> list[dict[str, Any]]:
    """perf_analyzer's CSV (times in µs) → one row per concurrency, in ms.

    The components (client send, network + server send/recv, server queue, compute input/infer/output,
    client recv) add up to the average latency, which this version's CSV does not print.
    """
    rows = []
    with path.open() as f:
        for raw in csv.DictReader(f):
            us = {k: float(v) for k, v in raw.items() if k and v not in (None, "")}
            queue = us.get("Server Queue", 0.0)
            compute = sum(us.get(k, 0.0) for k in ("Server Compute Input", "Server Compute Infer",
                                                   "Server Compute Output"))
            transfer = sum(us.get(k, 0.0) for k in ("Client Send", "Network+Server Send/Recv", "Client Recv"))
            rows.append({
                "variant": variant, "concurrency": int(us["Concurrency"]), "throughput": us["Inferences/Second"],
                "p50_ms": us["p50 latency"] / 1000, "p95_ms": us["p95 latency"] / 1000,
                "p99_ms": us["p99 latency"] / 1000, "avg_ms": us.get("Avg latency", queue + compute + transfer) / 1000,
                "queue_ms": queue / 1000, "compute_ms": compute / 1000, "transfer_ms": transfer / 1000,
            })
    return sorted(rows, key=lambda r: r["concurrency"])


def measure_model(tool: Tool, model: str, out: Path, concurrency: tuple[int, int], request_count: int,
                  run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    manifest = latest_manifest(settings.model_repository / model)
    if manifest is None:
        raise SystemExit(f"{model} is not exported; run `medstack export {model}`")
    if not manifest.get("preprocessing", {}).get("patch_size"):
        raise SkipModel(f"{model}: its manifest has no patch_size (not a patch model); no perf_analyzer config yet")
    input_name, shape, out_shape = request_shape(manifest)
    output_bytes = _bytes(out_shape, manifest["outputs"][0]["dtype"])
    with tempfile.TemporaryDirectory(prefix="perf-repo-") as tmp:
        repository = Path(tmp)
        variant_repository(model, repository)
        runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
        server = TritonServer(runtime, repository, free_port(), free_port(), free_port(), config_name="embedded",
                              log_file=run_dir / f"perf-triton-{model}.log")
        rows: list[dict[str, Any]] = []
        unstable: list[str] = []
        with server:
            url = f"127.0.0.1:{server.grpc_port}"
            # interleaved (each level: every variant), so drift in the machine's load hits all variants alike
            for level in range(concurrency[0], concurrency[1] + 1):
                for variant, suffix, extra in VARIANTS:
                    slug = variant.replace(" + ", "_").replace(" ", "_")
                    csv_path = out / f"{model}_{slug}_c{level}.csv"
                    row = run_level(tool, model + suffix, variant, extra, url, shape, input_name, output_bytes,
                                    level, csv_path, request_count)
                    if row is None:
                        unstable.append(f"{variant} at concurrency {level}")
                    else:
                        rows.append(row | {"model": model})
    info = {"model": model, "version": manifest["version"], "sha256": manifest["sha256"], "shape": shape,
            "output_shape": out_shape, "input_mb": _bytes(shape, manifest["inputs"][0]["dtype"]) / 2**20,
            "output_mb": output_bytes / 2**20, "unstable": unstable}
    return rows, info


def report(results: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION, "",
        f"`make perf` (`python -m bench.perf_analyzer`), {meta['date']}: perf_analyzer from the "
        f"`{TRITONCLIENT}` wheel against the embedded Triton 2.51 (python backend running ONNX Runtime, "
        "`configs/embedded.pbtxt`), gRPC, interleaved (at each level every variant in turn), one request = "
        "one patch of the manifest's `patch_size` with random "
        f"FP32 values, concurrency {meta['concurrency'][0]}–{meta['concurrency'][1]} (one perf_analyzer run per "
        f"level), windows of {meta['request_count']} requests until 3 agree within 50 % or 8 trials. Machine: "
        f"{meta['cpus']} CPU cores, load "
        f"average {meta['loadavg']} at the start, **shared with model training in the background**: compare "
        "the variants with each other (same run, same minute), not with other machines.", "",
    ]
    for model, (rows, info) in results.items():
        lines += [
            f"**{model}** v{info['version']} (`{info['sha256'][:12]}…`): input {info['shape']} "
            f"({info['input_mb']:.1f} MB), output {info['output_shape']} ({info['output_mb']:.1f} MB) per request.", "",
            markdown_table(
                ["variant", "concurrency", "inferences/s", "p50 ms", "p95 ms", "p99 ms", "queue ms", "compute ms",
                 "transfer/client ms"],
                [[r["variant"], r["concurrency"], f"{r['throughput']:.2f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}",
                  f"{r['p99_ms']:.0f}", f"{r['queue_ms']:.0f}", f"{r['compute_ms']:.0f}", f"{r['transfer_ms']:.0f}"]
                 for r in rows]),
        ]
        if info["unstable"]:
            lines += [f"No stable measurement: {', '.join(info['unstable'])}.", ""]
        by = {(r["variant"], r["concurrency"]): r for r in rows}
        top = meta["concurrency"][1]
        on, off, shm = (by.get((v, top)) for v in ("batching", "no batching", "batching + shm"))
        if on and off and shm:
            mean = {v: sum(r["throughput"] for r in rows if r["variant"] == v)
                    / max(1, sum(r["variant"] == v for r in rows)) for v, _, _ in VARIANTS}
            lines += [
                f"At concurrency {top}: dynamic batching gives {on['throughput'] / off['throughput']:.2f}× the "
                f"throughput of no batching (p95 {on['p95_ms']:.0f} vs {off['p95_ms']:.0f} ms, queue "
                f"{on['queue_ms']:.0f} vs {off['queue_ms']:.0f} ms); system shared memory gives "
                f"{shm['throughput'] / on['throughput']:.2f}× plain gRPC with batching (p95 {shm['p95_ms']:.0f} vs "
                f"{on['p95_ms']:.0f} ms). Mean over the levels: {mean['batching']:.1f} (batching), "
                f"{mean['no batching']:.1f} (no batching), {mean['batching + shm']:.1f} (batching + shm) "
                "inferences/s. One run on a loaded machine: single levels can invert (see the table), the "
                "averages and the trend over levels are what to read. With shared memory the 20 MB of logits "
                "per request are not serialised into gRPC, which also shortens Triton's compute output.", "",
            ]
    lines += [f"Skipped: {why}" for why in meta.get("skipped", [])] + ([""] if meta.get("skipped") else [])
    lines += [
        "queue = Triton's queue time (where dynamic batching waits and requests wait for the one instance); "
        "compute = Triton's compute input + infer + output; transfer/client = client send + network and "
        "server send/receive + client receive (serialisation, gRPC, copying in and out). Raw CSVs and "
        "perf_analyzer's own output (`.txt`, with the "
        "exact command): `docs/perf/`.", "",
        "![perf latency](img/perf_latency.png)", "",
        "![perf split](img/perf_split.png)", "",
    ]
    return "\n".join(lines)


def unavailable_report(reason: str, meta: dict[str, Any]) -> str:
    return "\n".join([
        SECTION, "",
        f"`make perf` (`python -m bench.perf_analyzer`), {meta['date']}: **not measured** — perf_analyzer could "
        "not be run here:", "", "```", reason.strip(), "```", "",
    ])


def write_outputs(results: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]], meta: dict[str, Any]) -> None:
    from bench.plots import perf_latency, perf_split

    rows = [r for found, _ in results.values() for r in found]
    perf_latency(rows, REPO_ROOT / "docs" / "img" / "perf_latency.png")
    perf_split(rows, REPO_ROOT / "docs" / "img" / "perf_split.png")
    write_section(report(results, meta))
    log("wrote the 'Triton perf_analyzer (make perf)' section of docs/benchmarks.md")


def rewrite_report(results_json: Path) -> int:
    saved = json.loads(results_json.read_text())
    models = saved["models"]
    results = {m: ([r for r in saved["rows"] if r.get("model", m) == m], info) for m, info in models.items()}
    write_outputs(results, saved["meta"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", help="default: every model in the repository")
    parser.add_argument("--concurrency", default="1:4", help="start:end")
    parser.add_argument("--request-count", type=int, default=12, help="requests per measurement window")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "perf")
    parser.add_argument("--no-report", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rewrite the section and plots from docs/perf/results.json")
    args = parser.parse_args(argv)
    if args.report_only:
        return rewrite_report(args.out / "results.json")
    start, end = (int(x) for x in args.concurrency.split(":"))
    models = args.models or sorted(p.parent.name for p in settings.model_repository.glob("*/config.pbtxt"))
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "concurrency": (start, end),
            "request_count": args.request_count, "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        tool = fetch_tool()
        log(f"perf_analyzer: {tool.binary} (libraries: {', '.join(map(str, tool.lib_dirs))})")
        results, skipped = {}, []
        for model in models:
            try:
                results[model] = measure_model(tool, model, args.out, (start, end), args.request_count,
                                                settings.run_dir)
            except SkipModel as why:
                log(str(why))
                skipped.append(str(why))
        meta["skipped"] = skipped
    except PerfAnalyzerUnavailable as error:
        log(f"not measured: {error}")
        if not args.no_report:
            write_section(unavailable_report(str(error), meta))
        return 1
    rows = [r for found, _ in results.values() for r in found]
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows,
                                                        "models": {m: i for m, (_, i) in results.items()}}, indent=1))
    if not args.no_report:
        write_outputs(results, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

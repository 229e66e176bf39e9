"""Gateway overhead: the same small inference direct to Triton over gRPC and through the gateway.

    .venv/bin/python -m bench.gateway_overhead [--requests 300] [--no-write]

One run starts a private Redis, an embedded Triton and one gateway process (SQLite, audit on,
rate limiter on but never reached, JSON logs to a file), then sends ``reference_hutissue`` a
1×1×16×32×32 float32 patch (64 KiB in, 320 KiB of logits out) three ways, interleaved round by
round so drift hits all three alike:

* direct: ``tritonclient.grpc`` to Triton (what a worker does);
* gateway .npy: ``POST /v1/models/{name}/infer`` with ``application/x-npy`` both ways;
* gateway JSON: the same as KServe v2-style JSON (numbers as text both ways).

Each request is sequential (one client, keep-alive), so the figures are latency, not throughput.
The paths take turns in blocks of 20 requests until each has ``--requests``.
Results go to the "Gateway overhead" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from bench.report import write_section
from core.settings import Settings, settings
from core.triton import TritonServer, http_ready, prepare_runtime, stop_process_group
from medstack.stack import _spawn, _wait, component_env, free_port, gateway_command, redis_answers

SECTION = "## Gateway overhead"
MODEL = "reference_hutissue"
SHAPE = (1, 1, 16, 32, 32)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(calls: dict[str, Callable[[], None]], rounds: int, warmup: int, block: int = 20) -> dict[str, list[float]]:
    """``rounds`` timed calls per path, in blocks of ``block`` that take turns, so slow drift of the
    machine hits every path alike while one path's after-work (GC, the audit write) rarely lands in
    another's timing."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    while any(len(t) < rounds for t in times.values()):
        for name, call in calls.items():
            for _ in range(min(block, rounds - len(times[name]))):
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1000)
    return times


def run(rounds: int, warmup: int, profile: Path | None = None) -> tuple[dict[str, list[float]], dict[str, str]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[int] = []
    gateway: subprocess.Popen[bytes] | None = None
    triton: TritonServer | None = None
    try:
        redis_port = free_port()
        redis = _spawn([shutil.which("redis-server") or "redis-server", "--port", str(redis_port), "--save", "",
                        "--appendonly", "no", "--dir", str(tmp)], tmp / "redis.log", dict(os.environ))
        procs.append(redis.pid)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        _wait(lambda: redis_answers(redis_url), "redis", 20, redis, tmp / "redis.log")

        runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
        triton = TritonServer(runtime, settings.model_repository, http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port(), log_file=tmp / "triton.log")
        triton.start()
        triton.wait_ready(timeout_s=120)

        s = Settings(run_dir=tmp, artifact_dir=tmp / "artifacts", database_url=f"sqlite:///{tmp / 'bench.db'}",
                     triton_http_port=triton.http_port, triton_grpc_port=triton.grpc_port,
                     triton_metrics_port=triton.metrics_port, gateway_port=free_port())
        key = "msk_bench_" + os.urandom(16).hex()
        env = component_env(s, redis_url) | {"MEDSTACK_BOOTSTRAP_KEY": key, "MEDSTACK_RATE_LIMIT_PER_S": "1000000",
                                             "MEDSTACK_RATE_LIMIT_BURST": "1000000"}
        command = gateway_command(s)
        if profile is not None:  # the same gateway under pyinstrument's sampler, its report written at exit
            command = [command[0], "-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(profile), *command[1:]]
        gateway = _spawn(command, tmp / "gateway.log", env)
        procs.append(gateway.pid)
        url = f"http://127.0.0.1:{s.gateway_port}"
        _wait(lambda: http_ready(url + "/livez"), "gateway", 60, gateway, tmp / "gateway.log")

        x = np.random.default_rng(0).uniform(-1100, 1500, SHAPE).astype(np.float32)
        buffer = io.BytesIO()
        np.save(buffer, x)
        npy_body = buffer.getvalue()
        json_body = {"inputs": [{"name": "image", "shape": list(SHAPE), "datatype": "FP32",
                                 "data": x.ravel().tolist()}]}

        direct = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
        tensor = grpcclient.InferInput("image", list(SHAPE), "FP32")
        tensor.set_data_from_numpy(x)
        expected = direct.infer(MODEL, [tensor]).as_numpy("logits")
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

        def via_direct() -> None:
            direct.infer(MODEL, [tensor]).as_numpy("logits")

        def via_npy() -> None:
            r = http.post(f"/v1/models/{MODEL}/infer", content=npy_body, headers={"Content-Type": "application/x-npy"})
            r.raise_for_status()
            np.load(io.BytesIO(r.content))

        def via_json() -> None:
            r = http.post(f"/v1/models/{MODEL}/infer", json=json_body)
            r.raise_for_status()
            out = r.json()["outputs"][0]
            np.asarray(out["data"], np.float32).reshape(out["shape"])

        check = http.post(f"/v1/models/{MODEL}/infer", content=npy_body, headers={"Content-Type": "application/x-npy"})
        np.testing.assert_array_equal(np.load(io.BytesIO(check.content)), expected)
        paths = {"direct to Triton (gRPC)": via_direct, "gateway, .npy": via_npy, "gateway, JSON": via_json}
        if profile is not None:  # the profile is of the binary path alone
            del paths["gateway, JSON"]
        times = measure(paths, rounds, warmup)
        http.close()
        direct.close()
        version = check.headers["x-model-version"]
        return times, {"version": version}
    finally:
        if profile is not None and gateway is not None:
            # SIGINT: uvicorn re-raises it as KeyboardInterrupt, after which pyinstrument writes its report
            gateway.send_signal(signal.SIGINT)
            gateway.wait(timeout=60)
        for pid in reversed(procs):
            stop_process_group(pid)
        if triton is not None:
            triton.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def table(times: dict[str, list[float]]) -> str:
    base = statistics.median(times["direct to Triton (gRPC)"])
    rows = ["| path | p50 (ms) | p95 (ms) | mean (ms) | p50 ÷ direct p50 |", "|---|---|---|---|---|"]
    for name, values in times.items():
        p50 = percentile(values, 50)
        rows.append(f"| {name} | {p50:.2f} | {percentile(values, 95):.2f} | {statistics.fmean(values):.2f} | "
                    f"{p50 / base:.1f}× |")
    return "\n".join(rows)


def section(times: dict[str, list[float]], info: dict[str, str], rounds: int) -> str:
    direct = percentile(times["direct to Triton (gRPC)"], 50)
    npy = percentile(times["gateway, .npy"], 50)
    return f"""{SECTION}

`.venv/bin/python -m bench.gateway_overhead --requests {rounds}`: `{MODEL}` v{info['version']} on one
{'×'.join(map(str, SHAPE))} float32 patch (64 KiB in, 320 KiB of logits out), {rounds} sequential requests
per path, in alternating blocks of 20. The gateway path pays everything a real request pays: API-key
check, the Redis token bucket, the async gRPC call, .npy or JSON (de)serialisation, metrics, the JSON
access log and the audit record. {os.cpu_count()} CPU cores (1-minute load average {info['load']} during
the run: the machine was shared), Python {platform.python_version()}, embedded Triton (python backend).

{table(times)}

The gateway adds about {npy - direct:.1f} ms at the median to a {direct:.1f} ms inference with binary
tensors; JSON costs more because {int(np.prod(SHAPE)) * 6:,} numbers are printed and parsed as text, so
use `.npy` (or the direct gRPC path in `clients/grpc/triton_direct.py`) for anything but small probes.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gateway overhead vs direct Triton")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--profile", type=Path, help="run the gateway under pyinstrument, write its text report "
                        "here (implies --no-write: a sampled gateway is slower)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    times, info = run(args.requests, args.warmup, args.profile)
    if args.profile is not None:
        args.no_write = True
    info["load"] = f"{load_before:.1f} → {os.getloadavg()[0]:.1f}"
    text = section(times, info, args.requests)
    sys.stdout.write(text + "\n")
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

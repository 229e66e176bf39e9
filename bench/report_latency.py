"""Latency per report: Triton (``report_generate``: BLS over the ONNX encoder and decoder step) against
PyTorch eager running the same checkpoint and the same search code, side by side in one run.

    .venv/bin/python -m bench.report_latency [--images 20] [--beam 3] [--no-write]

Starts an embedded Triton that loads only the three report models, then for each held-out rendered test
image runs, interleaved so drift hits both alike: Triton greedy, eager greedy, Triton beam, eager beam.
Triton is called over gRPC from this process (no gateway); eager runs in this process on
``--threads`` threads (default 1, ONNX Runtime inside Triton uses its default thread count).
Writes the "Latency" section of docs/report.md (unless ``--no-write``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from bench.report import markdown_table, write_section
from core.settings import REPO_ROOT, settings
from core.triton import TritonServer, prepare_runtime
from medstack.stack import free_port

SECTION = "## Latency"
MODELS = ("report_encoder", "report_decoder", "report_generate")


def triton_call(client: grpcclient.InferenceServerClient, image: np.ndarray, beam: int) -> tuple[str, float]:
    inputs = [grpcclient.InferInput("image", [1, 1, 128, 128], "FP32"),
              grpcclient.InferInput("beam_size", [1], "INT32")]
    inputs[0].set_data_from_numpy(image)
    inputs[1].set_data_from_numpy(np.array([beam], np.int32))
    started = time.perf_counter()
    result = client.infer("report_generate", inputs)
    return result.as_numpy("text")[0].decode(), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from services.report import data, serving
    from services.report.evaluate import generate

    torch.set_num_threads(args.threads)
    corpus = data.Corpus.load()
    images = data.eval_images(corpus.splits["test"], "test")[: args.images]
    model, vocab, _ = serving.load_served()

    runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
    log = Path(tempfile.mkdtemp(prefix="report-bench-")) / "triton.log"
    server = TritonServer(runtime, settings.model_repository, http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), model_control="explicit", load_models=MODELS, log_file=log)
    server.start()
    times: dict[str, list[float]] = {"triton greedy": [], "eager greedy": [], "triton beam": [], "eager beam": []}
    words: list[int] = []
    same = 0
    try:
        server.wait_ready(timeout_s=240)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
        x0 = images[:1].astype(np.float32)[:, None] / 255.0
        triton_call(client, x0, 1)  # warm-up: first BLS calls load sessions
        generate(model, images[:1])
        for image in images:
            x = image.astype(np.float32)[None, None] / 255.0
            text, t = triton_call(client, x, 1)
            times["triton greedy"].append(t)
            started = time.perf_counter()
            ids, _ = generate(model, image[None])
            times["eager greedy"].append(time.perf_counter() - started)
            same += vocab.decode(ids[0]) == text
            words.append(len(text.split()))
            if args.beam > 1:
                times["triton beam"].append(triton_call(client, x, args.beam)[1])
                started = time.perf_counter()
                generate(model, image[None], beam_size=args.beam)
                times["eager beam"].append(time.perf_counter() - started)
        client.close()
    finally:
        server.stop()

    rows = []
    for kind in ("greedy", "beam"):
        tri, eag = times[f"triton {kind}"], times[f"eager {kind}"]
        if not tri:
            continue
        rows.append([f"{kind}{'' if kind == 'greedy' else f' {args.beam}'}", f"{statistics.median(tri) * 1000:.0f}",
                     f"{np.percentile(tri, 90) * 1000:.0f}", f"{statistics.median(eag) * 1000:.0f}",
                     f"{np.percentile(eag, 90) * 1000:.0f}", f"{statistics.median(tri) / statistics.median(eag):.2f}"])
    table = markdown_table(["decoding", "Triton median ms", "Triton p90 ms", "eager median ms", "eager p90 ms",
                            "Triton / eager"], rows)
    section = (
        f"{SECTION}\n\n`python -m bench.report_latency --images {args.images} --beam {args.beam} "
        f"--threads {args.threads}` on {platform.machine()} with {os.cpu_count()} CPUs (shared), {len(images)} "
        f"held-out rendered test images, "
        f"interleaved, one request at a time. Eager: PyTorch {torch.__version__} on {args.threads} thread(s), same "
        f"checkpoint and search code (`services/report/search.py`); Triton: gRPC to `report_generate`, which calls "
        f"the ONNX encoder once and the decoder step once per token (prefix recomputed, beam hypotheses batched). "
        f"Mean report length {np.mean(words):.1f} words; greedy text identical in {same}/{len(images)} cases.\n\n"
        + table)
    print(section)  # noqa: T201
    if not args.no_write:
        write_section(section, REPO_ROOT / "docs" / "report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

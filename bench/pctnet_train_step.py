"""PCT-Net training step (forward + backward, batch 2, CPU_CONFIG, 12 classes) in the four combinations of
memory layout (default vs channels-last) and precision (float32 vs bfloat16 autocast), side by side.

    python -m bench.pctnet_train_step --threads 1 --repeats 4

Prints seconds per step (median of ``--repeats`` after one warm-up) and each combination's ratio to the
default layout in float32. Behind the channels-last choice in services/segmentation/train.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from services.segmentation.pctnet import CPU_CONFIG, build_pctnet


def step_seconds(channels_last: bool, bf16: bool, repeats: int) -> float:
    cfg = dataclasses.replace(CPU_CONFIG, out_channels=12)
    model = build_pctnet(cfg).train()
    x = torch.randn(2, 1, *cfg.input_size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = model(x)
        y.float().sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = None
    for channels_last in (False, True):
        for bf16 in (False, True):
            s = step_seconds(channels_last, bf16, args.repeats)
            base = base or s
            print(f"channels_last={channels_last!s:5} bf16={bf16!s:5} {s:6.2f} s/step  {base / s:4.2f}x")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

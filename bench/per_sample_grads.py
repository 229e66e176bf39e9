"""Per-sample gradients: torch.func (functional_call + vmap + grad) against the naive loop.

Same model, same batch, same thread count, side by side in one run; the two results are checked
to agree before anything is timed. Writes (replaces) the "Per-sample gradients" section of
docs/benchmarks.md.

    .venv/bin/python -m bench.per_sample_grads [--threads 1] [--batch 64] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.report import write_section
from services.valuation.networks import build_model
from services.valuation.values import naive_per_sample_grads, per_sample_grads

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
TITLE = "## Per-sample gradients (data valuation)"
CASES = (  # (family, width, input C×H×W): the valuation defaults and the wider options
    ("small_cnn", 8, (1, 32, 32)),
    ("small_cnn", 16, (1, 32, 32)),
    ("resnet18_w", 8, (1, 32, 32)),
)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run(threads: int, batch: int, repeats: int) -> list[dict[str, object]]:
    torch.set_num_threads(threads)
    rows = []
    for family, width, shape in CASES:
        torch.manual_seed(0)
        model = build_model(family, shape[0], 10, width=width)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
        fast, slow = per_sample_grads(model, x, y), naive_per_sample_grads(model, x, y)
        err = max(float((fast[k] - slow[k]).abs().max() / slow[k].abs().max().clamp_min(1e-12)) for k in fast)
        t_vmap = _median_time(lambda m=model, x=x, y=y: per_sample_grads(m, x, y), repeats)
        t_loop = _median_time(lambda m=model, x=x, y=y: naive_per_sample_grads(m, x, y), repeats)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append({"model": f"{family} w{width}", "params": n_params, "input": "×".join(map(str, shape)),
                     "vmap_ms": 1e3 * t_vmap, "loop_ms": 1e3 * t_loop, "ratio": t_loop / t_vmap, "max_rel_err": err})
        print(f"{family:<11} w{width:<3} {n_params:>8,} params  torch.func {1e3 * t_vmap:8.1f} ms  "
              f"loop {1e3 * t_loop:8.1f} ms  loop/vmap {t_loop / t_vmap:5.2f}×  max rel diff {err:.1e}", flush=True)
    return rows


def section(rows: list[dict[str, object]], threads: int, batch: int, repeats: int) -> str:
    lines = [
        TITLE,
        "",
        f"`.venv/bin/python -m bench.per_sample_grads --threads {threads} --batch {batch} --repeats {repeats}` "
        f"({platform.machine()}, torch {torch.__version__}, {threads} thread(s), median of {repeats}). "
        f"Gradients of each sample's cross-entropy loss for a batch of {batch}, BatchNorm in eval mode: "
        "`torch.func` (`functional_call` + `vmap` + `grad`, what `services/valuation/values.py` uses) "
        "against one forward/backward per sample (the test reference). Both give the same gradients "
        "(max relative difference shown) before they are timed.",
        "",
        "| model | parameters | input | torch.func (ms) | naive loop (ms) | loop / torch.func | max rel diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['input']} | {r['vmap_ms']:.1f} | {r['loop_ms']:.1f} "
                     f"| **{r['ratio']:.2f}×** | {r['max_rel_err']:.1e} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows = run(args.threads, args.batch, args.repeats)
    if not args.no_write:
        write_section(section(rows, args.threads, args.batch, args.repeats), DOC)
        print(f"wrote the section to {DOC}")


if __name__ == "__main__":
    main()

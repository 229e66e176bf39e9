"""Per-sample gradient norms: activations × output gradients (grad_norms) against torch.func and the naive loop.

Same model, same batch, same thread count, side by side in one run; the three give the same squared
norms per sample and tensor (checked before anything is timed). Ratios are the result: the machine
this ran on was shared with other jobs, so absolute times are indicative only. Writes (replaces)
the "Per-sample gradient norms" section of docs/benchmarks.md.

    .venv/bin/python -m bench.valuation_grad_norms [--threads 1] [--batch 64] [--repeats 5] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from bench.per_sample_grads import DOC, _median_time
from bench.report import write_section
from services.valuation.grad_norms import per_sample_sq_norms
from services.valuation.networks import build_model
from services.valuation.values import naive_per_sample_grads, per_sample_grads

TITLE = "## Per-sample gradient norms (data valuation)"
CASES = (  # (family, width, input C×H×W): the evaluation's settings (digits 8×8, organ patches 32×32) and wider
    ("small_cnn", 8, (1, 8, 8)),
    ("small_cnn", 8, (1, 32, 32)),
    ("small_cnn", 16, (1, 32, 32)),
    ("resnet18_w", 8, (1, 32, 32)),
)


def _sq(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: g.flatten(1).pow(2).sum(1) for k, g in grads.items()}


def _one_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """One batched forward and backward (eval mode), the least any one-pass method costs."""
    model.eval()
    loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
    torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    model.train()


def run(threads: int, batch: int, repeats: int) -> list[dict[str, object]]:
    torch.set_num_threads(threads)
    rows = []
    for family, width, shape in CASES:
        torch.manual_seed(0)
        model = build_model(family, shape[0], 10, width=width)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g)
        ref = _sq(naive_per_sample_grads(model, x, y))
        err = 0.0
        for other in (per_sample_sq_norms(model, x, y), _sq(per_sample_grads(model, x, y))):
            err = max(err, max(float(((other[k] - ref[k]).abs() / ref[k].clamp_min(1e-30)).max()) for k in ref))
        t_hook = _median_time(lambda m=model, x=x, y=y: per_sample_sq_norms(m, x, y), repeats)
        t_func = _median_time(lambda m=model, x=x, y=y: _sq(per_sample_grads(m, x, y)), repeats)
        t_loop = _median_time(lambda m=model, x=x, y=y: _sq(naive_per_sample_grads(m, x, y)), repeats)
        t_pass = _median_time(lambda m=model, x=x, y=y: _one_pass(m, x, y), repeats)
        n_params = sum(p.numel() for p in model.parameters())
        rows.append({"model": f"{family} w{width}", "params": n_params, "input": "×".join(map(str, shape)),
                     "hook_ms": 1e3 * t_hook, "func_ms": 1e3 * t_func, "loop_ms": 1e3 * t_loop,
                     "vs_loop": t_loop / t_hook, "ceiling": t_loop / t_pass, "vs_func": t_func / t_hook,
                     "max_rel_err": err})
        print(f"{family:<11} w{width:<3} {'×'.join(map(str, shape)):<8} norms {1e3 * t_hook:7.1f} ms  "
              f"torch.func {1e3 * t_func:7.1f} ms  loop {1e3 * t_loop:7.1f} ms  loop/norms {t_loop / t_hook:5.1f}×  "
              f"func/norms {t_func / t_hook:5.1f}×  loop/one pass {t_loop / t_pass:5.1f}×  max rel diff {err:.1e}",
              flush=True)
    return rows


def section(rows: list[dict[str, object]], threads: int, batch: int, repeats: int) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        TITLE,
        "",
        f"`.venv/bin/python -m bench.valuation_grad_norms --threads {threads} --batch {batch} --repeats {repeats}` "
        f"({platform.machine()}, torch {torch.__version__}, {threads} thread(s), median of {repeats}; the machine "
        f"was shared with a training run and CI, load average {load:.1f} on {os.cpu_count()} cores at the end, so "
        "read the ratios, not the milliseconds). Squared norm of each sample's cross-entropy gradient per "
        f"trainable tensor for a batch of {batch}, BatchNorm in eval mode: **norms** = "
        "`services/valuation/grad_norms.py` (one batched forward/backward, norms from layer inputs and output "
        "gradients; the whole network's per-sample gradients are never held, a conv layer's at most one layer at "
        "a time; what `score_samples` uses when Data SI is not asked for), "
        "**torch.func** = per-sample gradients by `vmap` then squared, **naive loop** = one forward/backward per "
        "sample then squared. All three agree (max relative difference shown) before they are timed. The last "
        "column is the ceiling: the naive loop over one plain batched forward/backward of the same batch, which "
        "any one-pass method has to pay.",
        "",
        "| model | parameters | input | norms (ms) | torch.func (ms) | naive loop (ms) | loop / norms "
        "| torch.func / norms | max rel diff | loop / one batched pass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['input']} | {r['hook_ms']:.1f} | {r['func_ms']:.1f} "
                     f"| {r['loop_ms']:.1f} | **{r['vs_loop']:.1f}×** | {r['vs_func']:.1f}× | {r['max_rel_err']:.1e} "
                     f"| {r['ceiling']:.1f}× |")
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
        print("wrote the section to docs/benchmarks.md")


if __name__ == "__main__":
    main()

"""Give a task transfer's tuned decoder stages to its new task alone.

``task_transfer.py --also-tune backbone.ups.3`` (with ``backbone.ups.2``: the last two stages) trains the last
decoder stage(s) beside the new task's token, on the new task's loss alone. The checkpoint it writes decodes every
task through stages tuned for one, so the other organs lose nearly half their Dice (docs/hermes.md, "Eighth
look"). Because only the new task's loss trained them, the same weights can serve as that task's **private copy**
(`HermesConfig.private_task` / ``private_stages``) while every other task goes back to the pretrained stages: the
new task's output is the transfer's, every other task's is the pretrained network's, and the model grows by the
copy (21,856 parameters for the last stage, 108,576 for the last two at ``CPU_CONFIG``).

    CK=services/hermes/checkpoints
    python -m services.hermes.private_stage --tuned $CK/transfer_noemptydice_spleen_lastup_s0/token \\
        --pretrained $CK/transfer_noemptydice_spleen_s0/token --out $CK/transfer_noemptydice_spleen_private_lastup_s0

``--pretrained``: the transfer's own ``--pretrained`` folder. Every tensor of ``--tuned`` but the tuned stages and
the new task's table rows must equal it (checked; a mismatch raises), so a token checkpoint of the same pretrained
network, whose only change is its own new-task rows, gives the shared stages back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from services.hermes.network import HermesConfig, HermesR, count_parameters
from services.hermes.task_transfer import only_row_changed
from services.hermes.tasks import TASK_NAMES
from services.hermes.train import load_model
from services.segmentation import checkpoints

__all__ = ["STAGES", "with_private_stages", "main"]

#: the tuned modules a private copy can hold → how many of the last decoder stages that is
STAGES: dict[tuple[str, ...], int] = {("backbone.ups.3",): 1, ("backbone.ups.2", "backbone.ups.3"): 2}


def with_private_stages(tuned: HermesR, tuned_modules: list[str], task: int, pretrained: HermesR) -> HermesR:
    """``tuned`` with its tuned decoder stages moved to ``task``'s private copy and ``pretrained``'s stages back
    for every other task. Raises where ``tuned`` differs from ``pretrained`` anywhere else (outside the per-task
    tables, whose ``task`` row is the new token)."""
    stages = STAGES.get(tuple(sorted(tuned_modules)))
    if stages is None:
        raise ValueError(f"a private copy holds the last decoder stages {list(STAGES)}; this transfer tuned "
                         f"{tuned_modules}")
    if tuned.config.private_stages:
        raise ValueError("the tuned network has private stages already")
    state, before = tuned.state_dict(), pretrained.state_dict()
    prefixes = tuple(f"{m}." for m in tuned_modules)
    differ = [k for k, v in state.items() if not k.startswith(prefixes) and not torch.equal(v, before[k])
              and not (k.endswith(("task_table", "task_kernels")) and only_row_changed(v, before[k], task))]
    if differ:
        raise ValueError(f"the tuned network is not the pretrained one plus its stages and token: {differ[:5]}")
    config = HermesConfig.from_dict({**tuned.config.to_dict(), "private_task": task, "private_stages": stages})
    net = HermesR(config)
    merged = {k: before[k] if k.startswith(prefixes) else v for k, v in state.items()}
    for i, module in enumerate(sorted(tuned_modules)):  # ups.2 → private.0, ups.3 → private.1 (or ups.3 → 0)
        merged.update({f"private.{i}.{k[len(module) + 1:]}": v for k, v in state.items()
                       if k.startswith(f"{module}.")})
    net.load_state_dict(merged)
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hermes.private_stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tuned", required=True, type=Path, help="token folder of task_transfer.py --also-tune")
    parser.add_argument("--pretrained", required=True, type=Path, help="that transfer's --pretrained folder")
    parser.add_argument("--out", required=True, type=Path, help="output checkpoint folder")
    args = parser.parse_args(argv)
    tuned, cfg = load_model(args.tuned)
    pretrained, _ = load_model(args.pretrained)
    if not (isinstance(tuned, HermesR) and isinstance(pretrained, HermesR)):
        parser.error("both checkpoints must be Hermes-R")
    if not cfg.get("tuned_modules") or not cfg.get("transfer_task"):
        parser.error(f"{args.tuned} is not a transfer with tuned modules (task_transfer.py --also-tune)")
    task = TASK_NAMES.index(cfg["transfer_task"])
    try:
        net = with_private_stages(tuned, cfg["tuned_modules"], task, pretrained)
    except ValueError as error:
        parser.error(str(error))
    config: dict[str, Any] = {**cfg, "model": net.config.to_dict(), "parameters": count_parameters(net),
                              "private_stages_from": str(args.tuned), "shared_stages_from": str(args.pretrained)}
    metrics = json.loads((checkpoints.resolve(args.tuned) / checkpoints.METRICS).read_text())  # its training
    checkpoints.save(args.out, net, config, metrics)
    print(args.out)  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The new-task transfer check (issue #21 item 4, after the paper): a Hermes-R trained without a task
learns it from a few labelled volumes through **its task token only**, against a single-task model
trained from scratch on the same volumes for the same number of iterations.

    python -m services.hermes.task_transfer --pretrained .cache/hermes_runs/hermes_no_lung_tumour_s0 \
        --task lung_tumour --train lung2 --test lung1 --iterations N --seed 0 --threads 1 \
        --out .cache/hermes_runs/transfer_lung_tumour_s0

Token learning (`learn_task_token`): every parameter is frozen except the rows of the new task in the five
fusion layers' task tables (and in the classifier's static task kernels, where the network has them); a
gradient hook zeroes the other rows, and Adam runs without weight decay, so their moments stay zero and they
do not move (checked after training: any other change raises). The new row starts as the mean of the
checkpoint's trained tokens of the task's modality; with ``init="calibrated"`` (the default) the bias of its
static kernel is then shifted so that the new task's median logit over the labelled voxels of a few training
batches is 0. Without that shift the borrowed kernel starts the new task saturated (logits near -30 inside
and outside the organ, sigmoid gradient ~1e-13), and Adam moves the bias about ``lr`` per step, so 200 steps
at 1e-3 cannot leave saturation (the first runs' Dice 0; docs/hermes.md has why the shift alone is not
enough). ``"modality_mean"`` skips the shift; ``"keep"`` leaves the table's row. Samples are presented in the
``modality`` task context (services/hermes/train.py) with the checkpoint's tasks plus the new one, the new one
supervised. The baseline (`train_single_task`) is the multi-head network with one output channel, all
parameters trained, on the same sampler, seed and iterations (Adam lr 1e-3 with decay).

``--no-empty-dice`` trains the token with the loss of a backbone trained so (`train.py --no-empty-dice`: the Dice
term leaves out empty masks); the single-task network keeps the standard loss.

``--also-tune MODULE`` (e.g. ``backbone.ups.3``, the last decoder stage) trains that module too, at ``--lr``: a
variant beside the token-only protocol, whose checkpoint changes every task's output (docs/hermes.md, "Eighth
look"); such a checkpoint is refused as ``--pretrained``.

``--pretrained`` may be the ``token`` folder of an earlier transfer: every tensor but the new task's rows is the
pretrained model's (checked when it was written), so dropping that task from its list gives the pretrained
model back, and the transfer can be re-run from a fresh clone without the pretraining run.

Writes ``<out>/token`` (a Hermes checkpoint whose task list includes the new task), ``<out>/single`` (an
existing one trained on the same sources, seed and iterations is reused: it does not depend on the token)
and ``<out>/comparison.json``: Dice of both on every ``--test`` volume on the 3 mm grid (threshold 0.5).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.common import resumable
from services.common.resumable import bf16_available
from services.common.training import Budget
from services.hermes.data import GridVolume, load_source_volume
from services.hermes.inference import HermesModel, HermesSegmenter
from services.hermes.network import HermesR, count_parameters
from services.hermes.tasks import TASK_NAMES, TASKS, get_task
from services.hermes.train import LR, Batches, TrainingData, build_network, fit, load_model, source_data, step_loss
from services.segmentation import checkpoints

__all__ = ["INITS", "learn_task_token", "train_single_task", "dice", "only_row_changed", "main"]

log = logging.getLogger(__name__)

INITS = ("calibrated", "modality_mean", "keep")
#: training batches whose labelled voxels set the calibrated start
CALIBRATION_BATCHES = 4


def _tables(net: HermesR) -> list[torch.nn.Parameter]:
    """The per-task tables whose row is the task's "token": the five fusion layers' task tables and,
    where the network has them, the classifier's static task kernels."""
    tables = [fusion.task_table for fusion in net.fusions]
    if net.classifier.task_kernels is not None:
        tables.append(net.classifier.task_kernels)
    return tables


def learn_task_token(pretrained: HermesR, trained_tasks: Sequence[int], task: int, data: TrainingData,
                     iterations: int, seed: int = 0, lr: float = LR, init: str = "calibrated",
                     batch_size: int = 2, amp: bool = False, empty_target_dice: bool = True,
                     tune: Sequence[str] = (), tune_lr: float = LR) -> tuple[HermesR, dict[str, Any]]:
    """A copy of ``pretrained`` whose only change is row ``task`` of every per-task table (`_tables`), trained
    on ``data`` for ``iterations`` steps (``empty_target_dice``: see `losses.hermes_loss`; give the backbone's
    own). ``tune`` names modules (e.g. ``backbone.ups.3``, the last decoder stage) trained as well, at ``tune_lr``:
    the variant beside the token-only protocol; they change every task's output. Returns the network and the
    training stats."""
    if task in trained_tasks:
        raise ValueError(f"task {TASK_NAMES[task]} is already among the checkpoint's trained tasks")
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; inits: {', '.join(INITS)}")
    if task not in data.tasks:
        raise ValueError(f"the data does not label {TASK_NAMES[task]}; it labels {[TASK_NAMES[t] for t in data.tasks]}")
    if init == "calibrated" and pretrained.classifier.task_kernels is None:
        raise ValueError("the calibrated start shifts the static kernel's bias: this network has none (task_kernels)")
    net = copy.deepcopy(pretrained)
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    peers = [t for t in trained_tasks if TASKS[t].modality == TASKS[task].modality]
    tables = _tables(net)
    with torch.no_grad():
        for table in tables:
            if init != "keep" and peers:
                table[task] = table[peers].mean(dim=0)
    for p in net.parameters():
        p.requires_grad_(False)
    row = torch.zeros(tables[0].shape[0], 1)
    row[task] = 1.0
    hooks = []
    for table in tables:
        table.requires_grad_(True)
        hooks.append(table.register_hook(lambda grad: grad * row.to(grad.dtype)))
    context = tuple(sorted({*trained_tasks, task}))
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    batches = _supervise_only(Batches(data.sampler, context, rng, batch_size, "modality", 0.0), task)
    start_logit = None
    if init == "calibrated":
        start_logit = calibrate_bias(net, [batches() for _ in range(CALIBRATION_BATCHES)], task)
    tuned = [p for m in tune for p in net.get_submodule(m).parameters()]
    for p in tuned:
        p.requires_grad_(True)
    # with tuned modules the tables (train.PRIOR_TABLES) take lr through the prior scale, the modules tune_lr
    base_lr = tune_lr if tuned else lr
    stats = fit(net, batches, step_loss(net, context, empty_target_dice), Budget(iterations), base_lr,
                weight_decay=0.0, amp=amp, parameters=[*tables, *tuned], log_every=max(1, iterations // 20),
                prior_lr_scale=lr / base_lr)
    for h in hooks:
        h.remove()
    moved = [k for k, v in net.state_dict().items()
             if not torch.equal(v, before[k]) and not k.startswith(tuple(f"{m}." for m in tune))
             and not (k.endswith(("task_table", "task_kernels")) and only_row_changed(v, before[k], task))]
    if moved:
        raise RuntimeError(f"token learning changed frozen tensors: {moved}")
    return net, {**stats, "init": init, "start_median_logit": start_logit, "tuned_modules": list(tune),
                 "trained_parameters": sum(table.shape[1] for table in tables) + sum(p.numel() for p in tuned)}


def new_task_logits(net: HermesR, batch: dict[str, torch.Tensor], task: int) -> torch.Tensor:
    """The logits of ``task`` on its supervised voxels labelled foreground in ``batch`` (1-D)."""
    with torch.no_grad():
        seg, _ = net.eval()(batch["image"], batch["tasks"], batch["modality_in"])
    where = (batch["tasks"] == task) & batch["supervised"]  # (B, T)
    return seg[where][batch["masks"][where] > 0].float()


def calibrate_bias(net: HermesR, batches: Sequence[dict[str, torch.Tensor]], task: int) -> float:
    """Shift the bias of ``task``'s static kernel so its median logit over the labelled voxels of ``batches``
    is 0; returns the median before the shift."""
    logits = torch.cat([new_task_logits(net, b, task) for b in batches])
    if logits.numel() == 0:
        raise ValueError(f"the calibration batches label no {TASK_NAMES[task]} voxel")
    median = float(logits.median())
    with torch.no_grad():
        net.classifier.task_kernels[task, -1] -= median  # type: ignore[index]
    return median


def only_row_changed(new: torch.Tensor, old: torch.Tensor, row: int) -> bool:
    """Whether ``new`` equals ``old`` in every row but ``row`` (a per-task table after learning one token)."""
    keep = torch.ones(new.shape[0], dtype=torch.bool)
    keep[row] = False
    return torch.equal(new[keep], old[keep])


def _supervise_only(batches: Batches, task: int) -> Callable[[], dict[str, torch.Tensor]]:
    """Batches whose supervision is limited to ``task`` (a few-volume source may label more)."""

    def next_batch() -> dict[str, torch.Tensor]:
        batch = batches()
        batch["supervised"] &= batch["tasks"] == task
        return batch

    return next_batch


def train_single_task(task: int, data: TrainingData, iterations: int, config: Any, seed: int = 0, lr: float = LR,
                      batch_size: int = 2, amp: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The baseline: a one-channel multi-head network trained from scratch on ``data`` (``task`` only)."""
    torch.manual_seed(seed)
    net = build_network("single", (task,), config)
    rng = np.random.default_rng(seed)
    batches = Batches(data.sampler, (task,), rng, batch_size, "labelled", 0.0)
    stats = fit(net, batches, step_loss(net, (task,)), Budget(iterations), lr, amp=amp,
                log_every=max(1, iterations // 20))
    return net, stats


def dice(model: HermesModel, volume: GridVolume, task: int, segmenter: HermesSegmenter | None = None) -> float:
    """Dice of ``task`` on a volume already on the model grid (threshold 0.5); NaN when both are empty."""
    segmenter = segmenter or HermesSegmenter()
    run = segmenter.run_list(model, (TASKS[task],), volume.modality)
    prob = segmenter.grid_probabilities(volume.image.array, model, run, volume.modality)[run.index(TASKS[task])]
    pred, truth = prob > 0.5, volume.masks[TASK_NAMES[task]]
    total = int(pred.sum() + truth.sum())
    return float("nan") if total == 0 else 2.0 * float((pred & truth).sum()) / total


def _trained_single(folder: Path, common: dict[str, Any], lr: float) -> torch.nn.Module | None:
    """The single-task baseline already in ``folder`` when it was trained on the same sources, seed, iterations
    and learning rate, else None."""
    if not (folder / "config.json").is_file():
        return None
    net, cfg = load_model(folder)
    # checkpoints written before the learning rate was recorded trained at the default
    same = (all(cfg.get(k) == common[k] for k in ("sources", "seed", "iterations", "transfer_task"))
            and cfg.get("lr", LR) == lr)
    if same:
        log.info("reusing the single-task baseline in %s", folder)
    return net if same else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hermes.task_transfer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", required=True, type=Path, help="Hermes checkpoint trained without --task")
    parser.add_argument("--task", required=True, help="the new task's name")
    parser.add_argument("--train", required=True, help="comma-separated source volumes with its labels")
    parser.add_argument("--test", default="", help="comma-separated held-out source volumes")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=LR, help="learning rate of the single-task network (and the token)")
    parser.add_argument("--token-lr", type=float, default=None,
                        help="learning rate of the token alone (default --lr): a few rows may take a larger one")
    parser.add_argument("--init", choices=INITS, default="calibrated", help="the new token's start (see above)")
    parser.add_argument("--no-empty-dice", action="store_true",
                        help="the token's Dice term leaves empty masks out, as a backbone trained with train.py "
                             "--no-empty-dice (the single-task network keeps the standard loss, so an existing one "
                             "is reused)")
    parser.add_argument("--also-tune", action="append", default=[], metavar="MODULE",
                        help="also train this module of the pretrained network at --lr (e.g. backbone.ups.3, the "
                             "last decoder stage); repeatable. A variant beside the token-only protocol: the "
                             "token checkpoint then changes every task's output")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    resumable.seed_everything(args.seed, args.threads)
    task = get_task(args.task).index
    pretrained, cfg = load_model(args.pretrained)
    if not isinstance(pretrained, HermesR):
        parser.error(f"{args.pretrained} is a {cfg['variant']} checkpoint, not Hermes-R")
    trained = tuple(TASK_NAMES.index(n) for n in cfg["tasks"] if n != cfg.get("transfer_task"))
    if cfg.get("tuned_modules"):
        parser.error(f"{args.pretrained} tuned {cfg['tuned_modules']} beside its token: it is not the pretrained "
                     "model plus one token")
    if cfg.get("transfer_task") == args.task and args.init == "keep":
        parser.error(f"{args.pretrained} learnt {args.task} already: --init keep would start from that token")
    data = source_data([s for s in args.train.split(",") if s], (task,))
    amp = bf16_available()
    token_lr = args.lr if args.token_lr is None else args.token_lr
    token_net, token_stats = learn_task_token(pretrained, trained, task, data, args.iterations, args.seed, token_lr,
                                              args.init, amp=amp, empty_target_dice=not args.no_empty_dice,
                                              tune=args.also_tune, tune_lr=args.lr)
    with_new = tuple(sorted({*trained, task}))
    pretrained_from = cfg.get("pretrained", str(args.pretrained)) if cfg.get("transfer_task") else str(args.pretrained)
    common = {"family": "hermes", "model": pretrained.config.to_dict(), "patch": cfg["patch"],
              "preprocessing": cfg["preprocessing"], "sources": list(data.sources), "seed": args.seed,
              "iterations": args.iterations, "data_version": data.version, "transfer_task": args.task}
    checkpoints.save(args.out / "token", token_net,
                     {**common, "variant": "hermes", "architecture": "HermesR",
                      "tasks": [TASK_NAMES[t] for t in with_new], "pretrained": pretrained_from, "lr": token_lr,
                      "empty_target_dice": not args.no_empty_dice, "tuned_modules": args.also_tune,
                      "parameters": count_parameters(token_net)},
                     {**token_stats, "task": "hermes-token-transfer"})
    single_net = _trained_single(args.out / "single", common, args.lr)
    if single_net is None:
        single_net, single_stats = train_single_task(task, data, args.iterations, pretrained.config, args.seed,
                                                     args.lr, amp=amp)
        single_cfg = {**common, "variant": "single", "architecture": "MultiHeadUNet", "tasks": [args.task],
                      "lr": args.lr, "output_channels": [args.task], "parameters": count_parameters(single_net)}
        single_cfg["model"] = single_net.config.to_dict()  # type: ignore[union-attr]
        checkpoints.save(args.out / "single", single_net, single_cfg,
                         {**single_stats, "task": "hermes-single-transfer"})
    token_model = HermesModel(token_net, with_new)
    single_model = HermesModel(single_net, (task,))
    result: dict[str, Any] = {"task": args.task, "train": list(data.sources), "iterations": args.iterations,
                              "seed": args.seed, "lr": {"token": token_lr, "single": args.lr}, "dice": {}}
    for name in [s for s in args.test.split(",") if s]:
        volume = load_source_volume(name)
        scores = {"token": dice(token_model, volume, task), "single": dice(single_model, volume, task)}
        result["dice"][name] = {k: None if np.isnan(v) else round(v, 4) for k, v in scores.items()}
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    print(args.out / "comparison.json")  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

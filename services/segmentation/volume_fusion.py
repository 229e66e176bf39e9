"""Volume Fusion (VF): the self-supervised pretext task of MIS-FM (../shared/METHODS.md §1a, current
block-wise version).

From one large unannotated volume, two sub-volumes are cut by random-resized cropping and augmented
(`crop_for_fusion`); a block grid over the patch gets fusion classes k ∈ {0..C−1} (`fuse`), and the
fused image is ``α·foreground + (1 − α)·background`` with ``α = k / (C − 1)``. The network is then
trained to predict k per voxel, an ordinary C-class segmentation.

    rng = np.random.default_rng(seed)
    fg, bg = crop_for_fusion(volume, (32, 96, 96), rng)
    image, label = fuse(fg, bg, rng)                         # label in {0..4}

Everything is deterministic given the generator. Intensities: the augmentation maps each crop to
[0, 1] (adaptive contrast); we return the fused image mapped to [-1, 1], the range of the
fine-tuning input (preprocessing.SPEC), so pretraining and fine-tuning see the same input scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["VolumeFusionConfig", "random_resized_crop", "adaptive_contrast", "random_gamma", "crop_for_fusion",
           "fuse", "alpha_of", "VolumeFusionSampler"]


@dataclass(frozen=True)
class VolumeFusionConfig:
    num_classes: int = 5  # C; K = C - 1 = 4 non-zero fusion levels
    foreground_ratio: float = 0.7
    block_min: tuple[int, int, int] = (8, 8, 8)
    block_max: tuple[int, int, int] = (32, 32, 32)
    scale_lower: tuple[float, float, float] = (0.7, 0.7, 0.7)
    scale_upper: tuple[float, float, float] = (1.5, 1.5, 1.5)
    p_flip: float = 0.5
    p_invert: float = 0.25
    gamma_range: tuple[float, float] = (0.7, 1.5)

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not 0.0 < self.foreground_ratio <= 1.0:
            raise ValueError(f"foreground_ratio must be in (0, 1], got {self.foreground_ratio}")
        if any(a < 1 or a > b for a, b in zip(self.block_min, self.block_max, strict=True)):
            raise ValueError(f"block_min {self.block_min} must be >= 1 and <= block_max {self.block_max}")
        if any(a <= 0 or a > b for a, b in zip(self.scale_lower, self.scale_upper, strict=True)):
            raise ValueError(f"scale_lower {self.scale_lower} must be > 0 and <= scale_upper {self.scale_upper}")

    def to_dict(self) -> dict:
        return asdict(self)


def random_resized_crop(volume: np.ndarray, out_size: Sequence[int], rng: np.random.Generator,
                        scale_lower: Sequence[float], scale_upper: Sequence[float]) -> np.ndarray:
    """Crop ``min(int(out·s), input)`` voxels per axis (``s ~ U(lower, upper)``) at a random position and
    zoom linearly back to ``out_size``. ``volume`` must be at least ``out_size`` (pad it first)."""
    crop = []
    for n, o, lo, hi in zip(volume.shape, out_size, scale_lower, scale_upper, strict=True):
        c = max(1, min(int(o * rng.uniform(lo, hi)), n))
        start = int(rng.integers(0, n - c + 1))
        crop.append(slice(start, start + c))
    sub = volume[tuple(crop)]
    zoom = [o / s for o, s in zip(out_size, sub.shape, strict=True)]
    out = ndimage.zoom(sub, zoom, order=1, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, o) for o in out_size)].astype(np.float32)


def adaptive_contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Piecewise-linear remap: [min, v_p0] → [0, 0.1], [v_p0, v_p1] → [0.1, 0.9], [v_p1, max] → [0.9, 1],
    with percentiles ``p0 ~ U(0.1, 2)``, ``p1 ~ U(98, 99.9)``."""
    lo, hi = float(x.min()), float(x.max())
    v0, v1 = np.percentile(x, [rng.uniform(0.1, 2.0), rng.uniform(98.0, 99.9)])
    xp = [lo, float(v0), float(v1), hi]
    for i in range(1, 4):  # strictly increasing, also for flat images
        xp[i] = max(xp[i], xp[i - 1] + 1e-6)
    return np.interp(x, xp, [0.0, 0.1, 0.9, 1.0]).astype(np.float32)


def random_gamma(x: np.ndarray, rng: np.random.Generator, gamma_range: tuple[float, float]) -> np.ndarray:
    """Min-max normalise, raise to ``gamma ~ U(range)``, map back to the original range."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-8:
        return x
    y = ((x - lo) / (hi - lo)) ** rng.uniform(*gamma_range)
    return (y * (hi - lo) + lo).astype(np.float32)


def _augment(x: np.ndarray, rng: np.random.Generator, cfg: VolumeFusionConfig) -> np.ndarray:
    for axis in range(3):
        if rng.random() < cfg.p_flip:
            x = np.flip(x, axis)
    x = adaptive_contrast(np.ascontiguousarray(x), rng)
    return random_gamma(x, rng, cfg.gamma_range)


def crop_for_fusion(volume: np.ndarray, out_size: Sequence[int], rng: np.random.Generator,
                    cfg: VolumeFusionConfig = VolumeFusionConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Two augmented sub-volumes (foreground, background) of ``out_size`` from one volume, in [0, 1]."""
    pad = [(0, max(0, o - n)) for n, o in zip(volume.shape, out_size, strict=True)]
    if any(p for _, p in pad):
        volume = np.pad(volume, pad, mode="constant", constant_values=float(volume.min()))
    fg = _augment(random_resized_crop(volume, out_size, rng, cfg.scale_lower, cfg.scale_upper), rng, cfg)
    bg = _augment(random_resized_crop(volume, out_size, rng, cfg.scale_lower, cfg.scale_upper), rng, cfg)
    if rng.random() < cfg.p_invert:
        fg, bg = 1.0 - fg, 1.0 - bg
    return fg, bg


def alpha_of(label: np.ndarray, num_classes: int) -> np.ndarray:
    """Fusion weight of the foreground crop for fusion class ``label``: ``k / (num_classes − 1)``."""
    return label.astype(np.float32) / float(num_classes - 1)


def fuse(fg: np.ndarray, bg: np.ndarray, rng: np.random.Generator,
         cfg: VolumeFusionConfig = VolumeFusionConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Block-wise fusion. Returns (image in [-1, 1] float32, label uint8 in {0..C−1}).

    One block size per axis ``~ U_int[block_min, min(block_max, size)]``, a random grid offset in
    ``[0, size mod block]``, exactly ``int(n_blocks · foreground_ratio)`` blocks get ``k ~ U_int{1..C−1}``,
    the rest (and the strips outside the grid) k = 0.
    """
    if fg.shape != bg.shape:
        raise ValueError(f"foreground {fg.shape} and background {bg.shape} must have the same shape")
    shape = fg.shape
    blocks, offsets, counts = [], [], []
    for n, lo, hi in zip(shape, cfg.block_min, cfg.block_max, strict=True):
        b = int(rng.integers(min(lo, n), min(hi, n) + 1))
        blocks.append(b)
        offsets.append(int(rng.integers(0, n % b + 1)))
        counts.append(n // b)
    n_blocks = int(np.prod(counts))
    n_fg = int(n_blocks * cfg.foreground_ratio)
    is_fg = np.zeros(n_blocks, dtype=bool)
    is_fg[:n_fg] = True
    rng.shuffle(is_fg)
    classes = np.where(is_fg, rng.integers(1, cfg.num_classes, size=n_blocks), 0).reshape(counts)
    grid = classes
    for axis, b in enumerate(blocks):
        grid = np.repeat(grid, b, axis=axis)
    label = np.zeros(shape, dtype=np.uint8)
    region = tuple(slice(o, o + c * b) for o, c, b in zip(offsets, counts, blocks, strict=True))
    label[region] = grid
    alpha = alpha_of(label, cfg.num_classes)
    image = alpha * fg + (1.0 - alpha) * bg
    return (image * 2.0 - 1.0).astype(np.float32), label


class VolumeFusionSampler:
    """Infinite, seeded stream of VF training pairs from a list of preprocessed volumes (z, y, x)."""

    def __init__(self, volumes: Sequence[np.ndarray], patch_size: Sequence[int], seed: int,
                 cfg: VolumeFusionConfig = VolumeFusionConfig()) -> None:
        if not volumes:
            raise ValueError("volumes must not be empty")
        self.volumes = list(volumes)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        volume = self.volumes[int(self.rng.integers(len(self.volumes)))]
        fg, bg = crop_for_fusion(volume, self.patch_size, self.rng, self.cfg)
        return fuse(fg, bg, self.rng, self.cfg)

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.sample() for _ in range(n)]
        return np.stack([p[0] for p in pairs])[:, None], np.stack([p[1] for p in pairs])

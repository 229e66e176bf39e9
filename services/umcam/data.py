"""The umcam training slices: two training heads, augmented in 3-D, with slice-level labels.

Heads (services/common/datasets, `load_brain_head`):

* ``robex_head`` — ROBEX's reference T1 head (a real subject with scalp, skull, face and neck) and
  its brain mask;
* ``mni152_brain`` — nilearn's MNI152 2009a T1, which ships skull-stripped, wrapped in a synthetic
  head (`synthetic_head`: CSF, skull with a diploë band and scalp shells grown from the brain mask
  with random, spatially varying thickness), so the classifier sees a second brain with a skull;
* ``colin27_head`` is **held out**: evaluation only (services/umcam/evaluation.py).

Each head is put on the model grid (`grid.to_model_slices`) and copied ``copies`` times with a random
3-D augmentation (`augment`): rotation (±10° out of plane, ±15° in plane), scale 0.9-1.1, shift ±10 mm,
left-right flip, elastic displacement (σ 3 mm on a coarse grid), multiplicative bias field
(±30 %), gamma 0.7-1.5 and noise; the copy 0 of each head is unaugmented.

Slice-level labels, the only supervision of the weak pipeline, come from each slice's brain area on
the model grid: present (1) when ≥ ``MIN_AREA_PX`` pixels (200 mm²), absent (0) when no pixel,
ambiguous (-1, left out of classifier training) in between. The pixel masks are kept in the set for
the fully supervised upper bound only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from core.settings import REPO_ROOT
from services.common.datasets import load_brain_head
from services.umcam.grid import PIXEL_MM, labels_to_model_slices, normalise, to_model_slices

__all__ = ["HELD_OUT", "MIN_AREA_PX", "TRAIN_HEADS", "SliceSet", "augment", "build_training_set", "slice_labels",
           "synthetic_head"]

TRAIN_HEADS = ("robex_head", "mni152_brain")
HELD_OUT = ("colin27_head",)
MIN_AREA_PX = 50  # 200 mm² at 2 mm pixels
CACHE = REPO_ROOT / ".cache" / "umcam"


@dataclass
class SliceSet:
    """Model slices with their labels: images (M, 128, 128) float16 in [-1, 1], masks (M, 128, 128)
    uint8 (full supervision only), labels (M,) int8 (1 present, 0 absent, -1 ambiguous), head and
    copy index per slice."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    heads: np.ndarray
    copies: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=self.images, masks=self.masks, labels=self.labels, heads=self.heads, copies=self.copies)

    @classmethod
    def load(cls, path: Path) -> SliceSet:
        with np.load(path) as f:
            return cls(**{k: f[k] for k in ("images", "masks", "labels", "heads", "copies")})


def slice_labels(masks: np.ndarray, min_area: int = MIN_AREA_PX) -> np.ndarray:
    """Per slice: 1 when the mask covers ≥ ``min_area`` pixels, 0 when none, -1 in between."""
    area = masks.reshape(len(masks), -1).sum(axis=1)
    return np.where(area >= min_area, 1, np.where(area == 0, 0, -1)).astype(np.int8)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, coarse: tuple[int, ...]) -> np.ndarray:
    """A smooth random field in [-1, 1]: uniform noise on a coarse grid, linearly upsampled to ``shape``."""
    noise = rng.uniform(-1, 1, coarse)
    return ndimage.zoom(noise, [s / c for s, c in zip(shape, coarse, strict=True)], order=1, mode="nearest")[
        tuple(slice(0, s) for s in shape)]


def synthetic_head(image: np.ndarray, mask: np.ndarray, z_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A skull-stripped brain on the model grid ((N, 128, 128) in [-1, 1], -1 = air) wrapped in CSF,
    skull (with a brighter diploë band) and scalp shells of random thickness; returns the new image."""
    distance = ndimage.distance_transform_edt(~mask.astype(bool), sampling=(z_mm, PIXEL_MM, PIXEL_MM))
    distance = distance * (1 + 0.25 * _smooth_field(mask.shape, rng, (3, 4, 4)))  # uneven thickness
    csf, skull, scalp = rng.uniform(1, 3), rng.uniform(4, 8), rng.uniform(3, 7)
    out = np.full(mask.shape, -1.0, np.float32)
    shells = [(0, csf, rng.uniform(-0.9, -0.6)), (csf, csf + skull, rng.uniform(-0.95, -0.8)),
              (csf + skull, csf + skull + scalp, rng.uniform(0.3, 0.9))]
    for lo, hi, level in shells:
        out[(distance > lo) & (distance <= hi)] = level
    diploe = (distance > csf + 0.35 * skull) & (distance <= csf + 0.65 * skull)
    out[diploe] = rng.uniform(-0.4, 0.1)
    inside = mask.astype(bool) | ((image > -0.95) & (distance <= csf))  # the brain and the template's own CSF
    out[inside] = image[inside]
    out += rng.normal(0, 0.02, out.shape).astype(np.float32) * (out > -1)
    return np.clip(out, -1, 1)


def augment(image: np.ndarray, mask: np.ndarray, z_mm: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random 3-D augmentation of a model-grid volume (N, 128, 128) and its mask (see module doc)."""
    shape = np.array(image.shape)
    spacing = np.array([z_mm, PIXEL_MM, PIXEL_MM])
    centre = (shape - 1) / 2 * spacing
    angles = np.deg2rad([rng.uniform(-15, 15), rng.uniform(-10, 10), rng.uniform(-10, 10)])  # about z, y, x
    rotation = _rotation(*angles) * rng.uniform(0.9, 1.1)
    shift = np.array([0.0, rng.uniform(-10, 10), rng.uniform(-10, 10)])
    index = np.indices(image.shape, dtype=np.float32).reshape(3, -1)
    world = index * spacing[:, None] - centre[:, None]
    source = (rotation @ world + centre[:, None] + shift[:, None]) / spacing[:, None]
    for axis in range(3):  # elastic: a coarse random displacement field, σ 3 mm
        displacement = _smooth_field(tuple(shape), rng, (4, 6, 6)) * 3.0 / spacing[axis]
        source[axis] += displacement.reshape(-1)
    if rng.random() < 0.5:
        source[2] = shape[2] - 1 - source[2]
    warped = ndimage.map_coordinates(image, source, order=1, mode="constant", cval=-1.0).reshape(image.shape)
    warped_mask = ndimage.map_coordinates(mask, source, order=0, mode="constant", cval=0).reshape(image.shape)
    unit = (warped + 1) / 2
    bias = np.exp(0.3 * _smooth_field(tuple(shape), rng, (3, 3, 3)))
    unit = np.clip(unit * bias, 0, None) ** rng.uniform(0.7, 1.5)
    unit = unit + rng.normal(0, rng.uniform(0.0, 0.03), unit.shape) * (unit > 0.01)
    out, _ = normalise(unit)
    return out, warped_mask.astype(np.uint8)


def _rotation(rz: float, ry: float, rx: float) -> np.ndarray:
    """Rotation about the z, y and x axes of (z, y, x) coordinates."""
    cz, sz, cy, sy, cx, sx = np.cos(rz), np.sin(rz), np.cos(ry), np.sin(ry), np.cos(rx), np.sin(rx)
    about_z = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # in-plane (y, x)
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # tilts (z, x)
    about_x = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # tilts (z, y)
    return about_z @ about_y @ about_x


def _head_on_grid(name: str) -> tuple[np.ndarray, np.ndarray, float]:
    head = load_brain_head(name)  # type: ignore[arg-type]
    slices, grid = to_model_slices(head.image)
    return slices[:, 0], labels_to_model_slices(head.labels, grid), grid.model.spacing[2]


def build_training_set(copies: int = 8, seed: int = 0, heads: tuple[str, ...] = TRAIN_HEADS) -> SliceSet:
    """The augmented training slices of ``heads`` (copy 0 unaugmented), cached under .cache/umcam/."""
    key = hashlib.sha256(json.dumps([copies, seed, heads, MIN_AREA_PX, 1]).encode()).hexdigest()[:12]
    path = CACHE / f"train_set_{key}.npz"
    if path.is_file():
        return SliceSet.load(path)
    rng = np.random.default_rng(seed)
    parts: list[tuple[np.ndarray, np.ndarray, str, int]] = []
    for name in heads:
        image, mask, z_mm = _head_on_grid(name)
        for copy in range(copies + 1):
            base = synthetic_head(image, mask, z_mm, rng) if name == "mni152_brain" else image
            volume, labels = (base, mask) if copy == 0 else augment(base, mask, z_mm, rng)
            parts.append((volume, labels, name, copy))
    images = np.concatenate([p[0] for p in parts]).astype(np.float16)
    masks = np.concatenate([p[1] for p in parts]).astype(np.uint8)
    out = SliceSet(images=images, masks=masks, labels=slice_labels(masks),
                   heads=np.concatenate([[p[2]] * len(p[0]) for p in parts]).astype("U16"),
                   copies=np.concatenate([[p[3]] * len(p[0]) for p in parts]).astype(np.int16))
    out.save(path)
    return out

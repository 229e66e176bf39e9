"""The slice grid of the umcam networks: axial 128×128 slices at 2 mm, intensities in [-1, 1].

Every path into the classifier and the U-Net (training, pseudo-labels, evaluation, the served job)
goes through `to_model_slices`, and every per-slice result comes back onto the input's voxel grid
through `from_model_slices`, so a mask overlays the image it was computed from.

The grid: the input is read in LPS (``ORIENTATION``; array axes (z, y, x), so ``array[k]`` is an
axial slice with anterior at the top and the patient's right on the left). Each axial slice is
resampled (linear) to ``PIXEL_MM`` = 2 mm pixels on a ``SLICE_SIZE`` × ``SLICE_SIZE`` square (a
256 mm field of view) centred on the input's in-plane centre; the slice axis keeps the input's
own slices (no resampling along z), so N = the number of axial slices. A fixed pixel size rather
than "stretch each slice to 128" keeps a brain the same size in pixels whatever the field of view;
parts of a larger field of view than 256 mm fall outside the grid and come back as background.

Intensities: MR has no absolute scale, so each volume is mapped linearly from its 0.5th..99.5th
percentile to [-1, 1] and clipped; outside the input's field of view the network sees -1.

    slices, grid = to_model_slices(volume)        # (N, 1, 128, 128) float32, SliceGrid
    labels = predict(slices).argmax(1)            # (N, 128, 128) uint8
    mask = from_model_slices(labels, grid)        # volume.array.shape, on the input's voxels
    volume.with_array(mask)                       # same geometry as the input
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.volume import Volume, reorient, resample_like

__all__ = ["ORIENTATION", "PIXEL_MM", "SLICE_SIZE", "SliceGrid", "from_model_slices", "labels_to_model_slices",
           "normalise", "to_model_slices"]

SLICE_SIZE = 128
PIXEL_MM = 2.0
ORIENTATION = "LPS"
PERCENTILES = (0.5, 99.5)
PAD_VALUE = -1.0


@dataclass(frozen=True)
class SliceGrid:
    """Where the model slices sit in the world, and the input grid they go back to.

    ``model``: geometry of the (N, 128, 128) stack as a `Volume` holding no voxels of interest
    (uint8 zeros); ``input``: the same for the input volume; ``window``: the intensities mapped to
    -1 and 1.
    """

    model: Volume
    input: Volume
    window: tuple[float, float]

    @property
    def n_slices(self) -> int:
        return self.model.shape[0]


def normalise(array: np.ndarray, window: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Map ``window`` (default: the array's 0.5th..99.5th percentile) linearly to [-1, 1], clipped."""
    if window is None:
        lo, hi = (float(v) for v in np.percentile(array, PERCENTILES))
        window = (lo, hi if hi > lo else lo + 1.0)
    lo, hi = window
    out = np.clip((array.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0
    return out.astype(np.float32), window


def _geometry(volume: Volume) -> Volume:
    """The volume's grid with placeholder voxels (only the geometry is used)."""
    return volume.with_array(np.zeros(volume.shape, np.uint8))


def _model_geometry(volume: Volume) -> Volume:
    """SLICE_SIZE² pixels of PIXEL_MM, centred in-plane on the LPS-oriented input, on its slices."""
    oriented = _geometry(reorient(_geometry(volume), ORIENTATION))
    direction = np.asarray(oriented.direction).reshape(3, 3)
    nz, ny, nx = oriented.shape
    sx, sy, sz = oriented.spacing
    centre_index = np.array([(nx - 1) / 2 * sx, (ny - 1) / 2 * sy, 0.0])
    half = (SLICE_SIZE - 1) / 2 * PIXEL_MM
    corner = np.asarray(oriented.origin) + direction @ (centre_index - np.array([half, half, 0.0]))
    return Volume(np.zeros((nz, SLICE_SIZE, SLICE_SIZE), np.uint8), (PIXEL_MM, PIXEL_MM, sz),
                  tuple(float(v) for v in corner), oriented.direction)


def to_model_slices(volume: Volume, window: tuple[float, float] | None = None) -> tuple[np.ndarray, SliceGrid]:
    """Axial model slices of a volume: ``(N, 1, 128, 128)`` float32 in [-1, 1], and their grid.

    ``window``: the intensities mapped to -1 and 1 (default: the volume's 0.5th..99.5th
    percentile, computed on the input voxels before resampling).

    >>> slices, grid = to_model_slices(read_volume("ch2.nii.gz"))  # doctest: +SKIP
    >>> slices.shape                                                 # (181, 1, 128, 128)
    """
    normalised, window = normalise(volume.array, window)
    model = _model_geometry(volume)
    resampled = resample_like(volume.with_array(normalised), model, "linear", default_value=PAD_VALUE)
    grid = SliceGrid(model=model, input=_geometry(volume), window=window)
    return resampled.array[:, None].astype(np.float32), grid


def labels_to_model_slices(labels: Volume, grid: SliceGrid) -> np.ndarray:
    """A label map on the input's grid as ``(N, 128, 128)`` uint8 model slices (nearest)."""
    return resample_like(labels.with_array(labels.array.astype(np.uint8)), grid.model, "nearest").array


def from_model_slices(per_slice: np.ndarray, grid: SliceGrid) -> np.ndarray:
    """Per-slice results ``(N, 128, 128)`` back on the input volume's voxel grid (its array's shape).

    Integer or bool arrays are label maps (nearest neighbour, uint8 out); float arrays are maps
    (linear, float32 out). Input voxels outside the model's field of view get 0.
    """
    per_slice = np.asarray(per_slice)
    if per_slice.shape != grid.model.shape:
        raise ValueError(f"per_slice has shape {per_slice.shape}; the grid holds {grid.model.shape}")
    if per_slice.dtype.kind == "f":
        out = resample_like(grid.model.with_array(per_slice.astype(np.float32)), grid.input, "linear")
        return out.array.astype(np.float32)
    out = resample_like(grid.model.with_array(per_slice.astype(np.uint8)), grid.input, "nearest")
    return out.array.astype(np.uint8)

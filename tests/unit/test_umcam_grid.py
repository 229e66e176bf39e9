"""The umcam slice grid: shapes, geometry, and an image slice → model grid → back overlays."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.volume import Volume, VolumeError, reorient
from services.umcam.grid import SLICE_SIZE, from_model_slices, labels_to_model_slices, to_model_slices

RAS = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _head(shape=(24, 90, 70), spacing=(2.5, 2.2, 3.0), direction=RAS) -> Volume:
    """A bright off-centre ellipsoid "brain" in a dimmer "scalp", anisotropic, not LPS."""
    z, y, x = np.indices(shape, dtype=np.float32)
    centre = np.array(shape) / 2 + np.array([0, 8, -6])
    r = (((z - centre[0]) / 9) ** 2 + ((y - centre[1]) / 30) ** 2 + ((x - centre[2]) / 20) ** 2)
    image = np.where(r < 1, 300.0, np.where(r < 1.6, 80.0, 0.0)).astype(np.float32)
    return Volume(image, spacing, (10.0, -20.0, 5.0), direction)


def test_shapes_and_range():
    head = _head()
    slices, grid = to_model_slices(head)
    assert slices.shape == (24, 1, SLICE_SIZE, SLICE_SIZE) and slices.dtype == np.float32
    assert slices.min() >= -1.0 and slices.max() <= 1.0
    assert grid.model.spacing[:2] == (2.0, 2.0) and grid.model.spacing[2] == pytest.approx(3.0)
    assert from_model_slices(np.zeros((24, SLICE_SIZE, SLICE_SIZE), np.uint8), grid).shape == head.shape


def test_image_slices_come_back_on_the_input():
    """Thresholding the model slices and mapping them back overlays the input's own bright region."""
    head = _head()
    slices, grid = to_model_slices(head)
    back = from_model_slices((slices[:, 0] > 0.5).astype(np.uint8), grid)
    truth = head.array > 200
    dice = 2 * (back.astype(bool) & truth).sum() / (back.sum() + truth.sum())
    assert back.dtype == np.uint8 and dice > 0.93


def test_labels_round_trip_and_lps_slices():
    head = _head()
    labels = head.with_array((head.array > 200).astype(np.uint8))
    _, grid = to_model_slices(head)
    on_grid = labels_to_model_slices(labels, grid)
    back = from_model_slices(on_grid, grid)
    dice = 2 * (back & labels.array).sum() / (back.sum() + labels.array.sum())
    assert dice > 0.93
    # slice k is the LPS-reoriented input's axial slice k: same slice count and same world z
    lps = reorient(labels, "LPS")
    assert grid.model.orientation_code() == "LPS"
    assert grid.model.origin[2] == pytest.approx(lps.origin[2])
    assert np.array_equal(on_grid.sum(axis=(1, 2)) > 0, lps.array.sum(axis=(1, 2)) > 0)


def test_float_maps_and_bad_shapes():
    head = _head()
    slices, grid = to_model_slices(head)
    back = from_model_slices(slices[:, 0], grid)
    assert back.dtype == np.float32 and back.shape == head.shape
    with pytest.raises(ValueError, match="per_slice"):
        from_model_slices(np.zeros((3, SLICE_SIZE, SLICE_SIZE), np.uint8), grid)
    with pytest.raises(VolumeError):
        Volume(np.zeros((4, 4)), (1.0, 1.0, 1.0))

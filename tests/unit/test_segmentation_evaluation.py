"""The segmentation evaluation's baseline and scoring pieces, on small made-up volumes (no data, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from services.common.volume import Volume
from services.segmentation.evaluate import (
    AtlasVolume,
    NearestAtlas,
    _surface,
    crop,
    hd95,
    ncc,
    ncc_map,
)
from services.segmentation.preprocessing import normalise

LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _world(volume: Volume, zyx: tuple[int, int, int]) -> np.ndarray:
    d = np.asarray(volume.direction).reshape(3, 3)
    return np.asarray(volume.origin) + d @ (np.asarray(zyx[::-1], dtype=float) * np.asarray(volume.spacing))


def test_ncc_map_matches_ncc_of_every_window() -> None:
    rng = np.random.default_rng(0)
    moving = rng.standard_normal((9, 8, 7))
    fixed = moving[2:6, 1:5, 3:6] + 0.1 * rng.standard_normal((4, 4, 3))
    scores = ncc_map(fixed, moving)
    assert scores.shape == (6, 5, 5)
    for k, j, i in np.ndindex(*scores.shape):
        assert scores[k, j, i] == pytest.approx(ncc(fixed, moving[k:k + 4, j:j + 4, i:i + 3]), abs=1e-9)
    assert np.unravel_index(np.argmax(scores), scores.shape) == (2, 1, 3)


def test_hd95_equals_the_distance_transform_figure() -> None:
    rng = np.random.default_rng(1)
    a = ndimage.gaussian_filter(rng.standard_normal((20, 24, 22)), 2) > 0.05
    b = ndimage.gaussian_filter(rng.standard_normal((20, 24, 22)), 2) > 0.05
    spacing = (2.5, 0.7, 0.9)
    for mask in (a, b):  # off the array border, so whole-array surfaces are those hd95 sees in its box
        mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1] = (False,) * 6
    sa, sb = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing)
    expected = max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95))
    assert hd95(a, b, spacing) == pytest.approx(expected, rel=1e-9)


def test_crop_keeps_every_voxel_where_it_was() -> None:
    volume = Volume(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8), (0.7, 0.8, 2.5), (10.0, 20.0, -30.0), LAS)
    part = crop(volume, (2, 5), slice(1, 6), slice(3, 8))
    assert part.shape == (3, 5, 5) and part.array.dtype == np.int16
    assert part.array[0, 0, 0] == volume.array[2, 1, 3]
    np.testing.assert_allclose(_world(part, (0, 0, 0)), _world(volume, (2, 1, 3)))
    assert part.direction == volume.direction


def _phantom(shape: tuple[int, int, int], centre: tuple[float, float, float], radii: tuple[float, float, float],
             organ_at: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """HU image and labels: a soft-tissue ellipsoid body in air, a lung-like dark ball (label 7) and a
    bright ball (label 11) inside it."""
    zz, yy, xx = np.indices(shape, dtype=float)
    body = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii, strict=True)) <= 1
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    lung = sum((g - c) ** 2 for g, c in zip((zz, yy, xx), organ_at, strict=True)) <= 16
    bone = sum((g - c) ** 2 for g, c in zip((zz, yy, xx), (centre[0], centre[1] + 3, centre[2] - 4),
                                               strict=True)) <= 6
    hu[lung], labels[lung] = -850.0, 7
    hu[bone], labels[bone] = 600.0, 11
    return hu, labels


def test_nearest_atlas_picks_the_matching_volume_and_moves_its_labels_onto_the_query() -> None:
    shape, spacing = (24, 26, 26), (3.0, 3.0, 3.0)
    grid = Volume(np.zeros(shape, np.float32), spacing, (-40.0, -40.0, -35.0))
    hu_a, labels_a = _phantom(shape, (12, 13, 13), (10, 9, 10), (10, 12, 8))
    hu_b, labels_b = _phantom(shape, (12, 13, 13), (7, 11, 6), (15, 14, 16))
    atlas = NearestAtlas([AtlasVolume(5, grid.with_array(normalise(hu_b)), grid.with_array(labels_b)),
                          AtlasVolume(7, grid.with_array(normalise(hu_a)), grid.with_array(labels_a))])
    shift = np.array([6.0, -9.0, 12.0])  # mm, world x, y, z: whole 3 mm voxels
    query = Volume(hu_a, spacing, tuple(np.asarray(grid.origin) + shift))
    labels = atlas(query)
    choice = atlas.choices[-1]
    assert choice.seed == 7 and choice.ncc == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(choice.shift_mm, shift, atol=1e-6)
    assert labels.same_grid(query) and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(labels.array, labels_a)
    assert set(choice.ncc_by_seed) == {5, 7} and choice.ncc_by_seed[5] < choice.ncc_by_seed[7]

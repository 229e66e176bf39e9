"""Localization maths without a model: extreme points and boxes, coordinates, MedLAM's RDR step and
MSS refinement (with a hand-made feature extractor whose answer is known), MedLSAM slice crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.common.job_io import JobInputError
from services.common.volume import Volume
from services.localization.boxseg import INPUT, network_input, paste
from services.localization.geometry import (
    box_from_points,
    box_iou,
    box_of_mask,
    crop,
    extreme_points,
    mm_to_voxel,
    voxel_to_mm,
    wall_distance,
    world_box,
)
from services.localization.job import points_on_grid
from services.localization.medlam import (
    QueryAnchor,
    StructureEmbedding,
    embed_points,
    iterative_rdr,
    mss_refine,
    rdr_points,
)
from services.localization.preprocessing import GRID, hu_to_unit


def _ellipsoid(shape=(40, 50, 60), centre=(20, 22, 35), radii=(8, 10, 12)) -> np.ndarray:
    z, y, x = np.indices(shape)
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip((z, y, x), centre, radii, strict=True))
    return distance <= 1


def test_extreme_points_give_back_the_mask_box() -> None:
    mask = _ellipsoid()
    points = extreme_points(mask)
    assert all(mask[tuple(p.astype(int))] for p in points)  # on the object, not beside it
    lo, hi = box_from_points(points)
    want_lo, want_hi = box_of_mask(mask)
    np.testing.assert_array_equal(lo, want_lo)
    np.testing.assert_array_equal(hi, want_hi)


def test_box_metrics() -> None:
    a = (np.array([0.0, 0, 0]), np.array([10.0, 10, 10]))
    assert box_iou(a, a) == 1.0
    b = (np.array([5.0, 0, 0]), np.array([15.0, 10, 10]))
    assert box_iou(a, b) == pytest.approx(500 / 1500)
    assert wall_distance(a, b) == pytest.approx(10 / 6)


def test_world_box_covers_voxel_edges_on_a_flipped_grid() -> None:
    volume = Volume(np.zeros((5, 6, 7), np.int16), (0.5, 1.0, 2.0), (0.0, 0.0, 0.0), (-1.0, 0, 0, 0, 1, 0, 0, 0, 1))
    lo, hi = world_box(volume, np.array([1, 2, 3]), np.array([2, 3, 4]))  # (z, y, x) voxels
    np.testing.assert_allclose(lo, [-4.5 * 0.5, 1.5, 1.0])
    np.testing.assert_allclose(hi, [-2.5 * 0.5, 3.5, 5.0])


def test_crop_pads_outside_the_array() -> None:
    array = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    cube = crop(array, np.array([0, 0, 0]), 4, fill=-1)
    assert cube.shape == (4, 4, 4)
    assert cube[2, 2, 2] == array[0, 0, 0] and cube[0, 0, 0] == -1


def test_voxel_and_world_coordinates_round_trip_on_a_flipped_grid() -> None:
    direction = (-1.0, 0, 0, 0, -1, 0, 0, 0, 1)  # RAS-stored axes in LPS world
    volume = Volume(np.zeros((5, 6, 7), np.int16), (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), direction)
    zyx = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    world = voxel_to_mm(volume, zyx)
    np.testing.assert_allclose(world[0], [10 - 3 * 0.7, -20 - 2 * 0.8, 30 + 2.5])
    np.testing.assert_allclose(mm_to_voxel(volume, world), zyx)


def test_hu_mapping_is_piecewise_linear() -> None:
    np.testing.assert_allclose(hu_to_unit(np.array([-2000, -1000, -600, -200, 0, 200, 1500, 3000])),
                               [0, 0, 0.1, 0.2, 0.5, 0.8, 1, 1], atol=1e-6)


def test_points_outside_the_volume_are_refused() -> None:
    volume = Volume(np.zeros((10, 20, 30), np.int16), (1.0, 1.0, 2.0))
    grid = Volume(np.zeros((4, 4, 6), np.float32), (5.0, 5.0, 5.0))
    inside = [[0, 0, 0], [29, 19, 9], [5, 5, 5], [6, 6, 6], [7, 7, 7], [8, 8, 8]]
    assert points_on_grid(volume, grid, {"liver": inside})["liver"].shape == (6, 3)
    with pytest.raises(JobInputError, match="outside the volume"):
        points_on_grid(volume, grid, {"liver": [*inside[:5], [30, 0, 0]]})


def _texture_predictor():
    """A stand-in network whose features are the crop's local texture (eight shifted copies), so
    every voxel of a random volume has a distinct descriptor, and whose RDR vector is the crop's
    mean intensity (not used by the MSS test)."""

    def predict(crops: np.ndarray):
        x = torch.from_numpy(crops)
        shifts = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
        full = torch.cat([torch.roll(x, s, dims=(2, 3, 4)) for s in shifts], 1)
        half, quarter = F.avg_pool3d(full, 2), F.avg_pool3d(full, 4)
        rdr = torch.stack([x.mean(dim=(1, 2, 3, 4))] * 3, 1)
        return rdr.numpy(), quarter.numpy(), half.numpy(), full.numpy()

    return predict


def test_mss_refinement_finds_the_template_point_again() -> None:
    rng = np.random.default_rng(0)
    volume = rng.random((64, 64, 64)).astype(np.float32)
    points = np.array([[30.0, 28, 33], [25, 40, 20], [40, 30, 30], [33, 33, 33], [20, 30, 40], [36, 22, 28]])
    embedding = embed_points(volume, points, _texture_predictor())
    start = points + rng.integers(-4, 5, size=points.shape)
    refined = mss_refine(volume, start, embedding, _texture_predictor(), radii=(None, None, None))
    np.testing.assert_array_equal(refined, points)


def test_coarse_to_fine_mss_finds_the_template_point_again() -> None:
    """Coarse to fine: the ¼ scale picks the 4-voxel block, the finer scales the voxel within it."""
    rng = np.random.default_rng(1)
    blocks = np.kron(rng.random((16, 16, 16)), np.ones((4, 4, 4)))
    volume = (blocks + 0.3 * rng.random((64, 64, 64))).astype(np.float32)
    points = np.array([[30.0, 28, 33], [25, 40, 20], [40, 30, 30], [33, 33, 33], [20, 30, 40], [36, 22, 28]])
    embedding = embed_points(volume, points, _texture_predictor())
    start = points + rng.integers(-6, 7, size=points.shape)
    refined = mss_refine(volume, start, embedding, _texture_predictor())
    np.testing.assert_array_equal(refined, points)


def test_iterative_rdr_converges_where_one_step_does_not() -> None:
    """A stand-in RDR whose vector is the crop centre's position (mm / R): iterating the move from a
    wrong anchor ends on the template point; one step from the anchor lands off it."""
    r = np.asarray(GRID.rdr_range_mm)
    target = np.array([[30.0, 20.0, 25.0]] * 6)
    embedding = StructureEmbedding(target * GRID.spacing_mm / r, tuple(np.ones((6, 2, k, k, k)) for k in (2, 4, 8)))
    anchor = QueryAnchor(rdr=np.array([0.3, -0.2, 0.1]), centre=np.array([5.0, 5.0, 5.0]))  # mislabelled anchor

    def cache(centres: np.ndarray) -> np.ndarray:
        return np.round(centres) * GRID.spacing_mm / r

    volume = np.zeros((60, 50, 50), np.float32)
    one_step = rdr_points(embedding, anchor)
    assert np.abs(one_step - target).max() > 5
    found = iterative_rdr(volume, embedding, anchor, None, steps=10, cache=cache)  # type: ignore[arg-type]
    assert np.abs(found - target).max() <= 1.0


def test_rdr_step_and_template_averaging() -> None:
    r = np.asarray(GRID.rdr_range_mm)
    target_mm = np.array([[50.0, -30.0, 10.0]] * 6)
    anchor = QueryAnchor(rdr=np.zeros(3), centre=np.array([10.0, 10.0, 10.0]))
    one = StructureEmbedding(np.arctanh(target_mm / r), tuple(np.ones((6, 2, k, k, k)) for k in (2, 4, 8)))
    np.testing.assert_allclose(rdr_points(one, anchor), 10 + target_mm / GRID.spacing_mm)
    two = StructureEmbedding.combine([one, one])
    np.testing.assert_allclose(two.rdr, one.rdr)
    assert two.shots == 2 and np.all(two.cubes[0] == 2)
    again = StructureEmbedding.from_arrays(one.to_arrays("liver"), "liver")
    np.testing.assert_allclose(again.rdr, one.rdr, rtol=1e-6)


def test_slice_crop_and_paste_round_trip() -> None:
    slice_hu = np.full((120, 140), -1000.0, np.float32)
    slice_hu[40:80, 50:100] = 60.0
    box = np.array([40.0, 50.0, 79.0, 99.0])
    image, box01, window = network_input(slice_hu, box)
    assert image.shape == (3, INPUT, INPUT)
    assert 0 < box01[0] < box01[2] < 1 and 0 < box01[1] < box01[3] < 1
    assert image[2].sum() > 0  # the dense box prompt
    soft = image[1] / image[1].max()  # the soft-tissue window, 1 on the object
    back = paste(soft, window, slice_hu.shape) > 0.5
    inside = np.zeros_like(back)
    inside[40:80, 50:100] = True
    assert (back & inside).sum() / inside.sum() > 0.9 and (back & ~inside).sum() / inside.sum() < 0.1

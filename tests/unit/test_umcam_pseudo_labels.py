"""UM-CAM fusion and geodesic seed expansion (services/umcam/pseudo_labels.py)."""

from __future__ import annotations

import numpy as np
import pytest

from services.umcam.pseudo_labels import (
    dijkstra_distance,
    expand_seeds,
    expand_seeds_batch,
    fuse_cams,
    geodesic_distance,
    otsu_threshold,
)


def test_confident_map_outweighs_an_uncertain_one():
    """Per pixel, a map near 0 or 1 pulls the fusion further than an uncertain one near 0.5."""
    confident = np.full((4, 4), 0.95, np.float32)
    confident[:, :2] = 0.02
    uncertain = np.full((4, 4), 0.45, np.float32)
    cams = np.stack([confident, uncertain, np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)])[None]
    plain = cams[0].mean(axis=0)
    fused = fuse_cams(cams)[0]
    assert fused.shape == (4, 4) and fused.min() == pytest.approx(0) and fused.max() == pytest.approx(1, abs=1e-4)
    # after min-max, the confident map's split (columns 0-1 vs 2-3) dominates more than in the plain mean
    gap = lambda m: m[:, 2:].mean() - m[:, :2].mean()  # noqa: E731
    plain = (plain - plain.min()) / (plain.max() - plain.min())
    assert gap(fused) > gap(plain) + 0.05


def test_fuse_cams_shape_checks():
    assert fuse_cams(np.random.default_rng(0).random((5, 3, 8, 8))).shape == (5, 8, 8)
    with pytest.raises(ValueError, match="N, L, H, W"):
        fuse_cams(np.zeros((3, 8, 8)))


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0])
def test_geodesic_distance_equals_dijkstra(lam):
    rng = np.random.default_rng(int(lam * 10))
    image = rng.normal(size=(13, 11)).astype(np.float32)
    image[4:9, 3:8] += 3.0  # a bright block: paths go around it
    seeds = np.zeros(image.shape, bool)
    seeds[0, 0] = seeds[12, 5] = True
    fast = geodesic_distance(image, seeds, lam=lam, max_iterations=50)
    assert np.allclose(fast, dijkstra_distance(image, seeds, lam=lam), atol=1e-4)


def test_otsu_threshold_splits_two_levels():
    cam = np.zeros((20, 20), np.float32)
    cam[5:15, 5:15] = 0.8
    assert 0.05 <= otsu_threshold(cam) <= 0.8


def test_expand_seeds_recovers_a_bright_region():
    """A blurred CAM over a bright disc: GSE follows the disc's edge in the image."""
    yy, xx = np.mgrid[:64, :64]
    disc = ((yy - 30) ** 2 + (xx - 34) ** 2) < 15**2
    image = np.where(disc, 1.0, 0.1).astype(np.float32) + np.random.default_rng(1).normal(0, 0.02, disc.shape)
    cam = np.exp(-(((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 9.0**2))).astype(np.float32)
    label = expand_seeds(image.astype(np.float32), cam)
    dice = 2 * (label.astype(bool) & disc).sum() / (label.sum() + disc.sum())
    assert label.dtype == np.uint8 and dice > 0.9
    assert not expand_seeds(image.astype(np.float32), np.zeros_like(cam)).any()


def test_batched_distances_and_labels_match_one_slice_at_a_time():
    rng = np.random.default_rng(3)
    images = rng.normal(size=(3, 12, 10)).astype(np.float32)
    seeds = np.zeros(images.shape, bool)
    seeds[0, 0, 0] = seeds[1, 5, 5] = seeds[2, 11, 9] = True
    together = geodesic_distance(images, seeds, max_iterations=50)
    alone = np.stack([geodesic_distance(i, s, max_iterations=50) for i, s in zip(images, seeds, strict=True)])
    assert np.allclose(together, alone)
    cams = np.stack([np.pad(np.ones((4, 4), np.float32), ((2 + k, 6 - k), (3, 3))) for k in range(3)])
    batch = expand_seeds_batch(images, cams)
    assert np.array_equal(batch, np.stack([expand_seeds(i, c) for i, c in zip(images, cams, strict=True)]))

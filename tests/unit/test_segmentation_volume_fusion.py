"""Volume Fusion: label/alpha consistency, block statistics, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from services.segmentation.volume_fusion import (
    VolumeFusionConfig,
    VolumeFusionSampler,
    adaptive_contrast,
    alpha_of,
    crop_for_fusion,
    fuse,
    random_resized_crop,
)


def _volume(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (40, 70, 80)).astype(np.float32)


def test_fused_image_is_alpha_blend_of_the_crops() -> None:
    rng = np.random.default_rng(3)
    fg, bg = crop_for_fusion(_volume(), (32, 64, 64), rng)
    image, label = fuse(fg, bg, rng)
    alpha = alpha_of(label, 5)
    np.testing.assert_allclose((image + 1) / 2, alpha * fg + (1 - alpha) * bg, atol=1e-6)
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4}
    assert np.all(alpha[label == 4] == 1.0) and np.all(alpha[label == 0] == 0.0)
    assert np.isclose(alpha_of(np.array([2]), 5)[0], 0.5)


def test_block_grid_has_the_configured_foreground_ratio() -> None:
    cfg = VolumeFusionConfig(block_min=(8, 16, 16), block_max=(8, 16, 16))
    fg = np.ones((32, 64, 64), np.float32)
    _, label = fuse(fg, np.zeros_like(fg), np.random.default_rng(1), cfg)
    blocks = label.reshape(4, 8, 4, 16, 4, 16).transpose(0, 2, 4, 1, 3, 5).reshape(64, -1)
    assert np.all(blocks.min(1) == blocks.max(1))  # one class per block
    assert int((blocks[:, 0] > 0).sum()) == int(64 * 0.7)


def test_same_seed_same_samples_other_seed_differs() -> None:
    vols = [_volume(0), _volume(1)]
    a = VolumeFusionSampler(vols, (16, 32, 32), seed=7).batch(2)
    b = VolumeFusionSampler(vols, (16, 32, 32), seed=7).batch(2)
    c = VolumeFusionSampler(vols, (16, 32, 32), seed=8).batch(2)
    assert a[0].shape == (2, 1, 16, 32, 32) and a[1].shape == (2, 16, 32, 32)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_crops_are_resized_to_output_and_volume_smaller_than_patch_is_padded() -> None:
    rng = np.random.default_rng(0)
    out = random_resized_crop(_volume(), (32, 64, 64), rng, (0.7,) * 3, (1.5,) * 3)
    assert out.shape == (32, 64, 64)
    fg, bg = crop_for_fusion(np.zeros((10, 20, 20), np.float32), (16, 32, 32), rng)
    assert fg.shape == bg.shape == (16, 32, 32)


def test_adaptive_contrast_maps_to_unit_range() -> None:
    y = adaptive_contrast(_volume(), np.random.default_rng(0))
    assert y.min() >= 0.0 and y.max() <= 1.0 and np.isclose(y.max(), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"num_classes": 1}, "num_classes"), ({"foreground_ratio": 0.0}, "foreground_ratio"),
     ({"block_min": (40, 8, 8)}, "block_min"), ({"scale_lower": (2.0, 0.7, 0.7)}, "scale_lower")],
)
def test_bad_config_raises(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        VolumeFusionConfig(**kwargs)

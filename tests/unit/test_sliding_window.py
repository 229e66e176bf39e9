"""Sliding window: exactly-known predictors, shapes, coverage and bad configurations."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.sliding_window import SlidingWindow, gaussian_importance, window_starts


def plus_one(patches: np.ndarray) -> np.ndarray:
    return np.concatenate([patches + 1, 2 * patches], axis=1)


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [((20, 30, 40), (8, 16, 16), 0.5), ((5, 7, 9), (8, 16, 16), 0.25), ((16, 16, 16), (16, 16, 16), 0.0),
     ((33, 17, 65), (8, 8, 32), 0.75)],
)
def test_known_predictor_is_reproduced_exactly(shape, roi, overlap) -> None:
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = SlidingWindow(roi_size=roi, overlap=overlap, batch_size=3)(volume, plus_one)
    assert out.shape == (2, *shape)
    np.testing.assert_allclose(out[0], volume + 1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], 2 * volume, rtol=1e-5, atol=1e-5)


def test_windows_cover_every_voxel_and_touch_the_border() -> None:
    assert window_starts(100, 32, 0.5) == [0, 16, 32, 48, 64, 68]
    assert window_starts(10, 32, 0.5) == [0]
    inferer = SlidingWindow(roi_size=(4, 8, 8), overlap=0.25)
    covered = np.zeros((10, 21, 30), bool)
    for w in inferer.windows(covered.shape):
        covered[w] = True
    assert covered.all()


def test_progress_reaches_one_and_batches_are_bounded() -> None:
    sizes, fractions = [], []

    def predict(patches: np.ndarray) -> np.ndarray:
        sizes.append(len(patches))
        return patches

    SlidingWindow(roi_size=(4, 4, 4), overlap=0.5, batch_size=4)(np.zeros((9, 9, 9), np.float32), predict,
                                                                  progress=fractions.append)
    assert max(sizes) <= 4 and fractions[-1] == 1.0 and fractions == sorted(fractions)


def test_gaussian_weights_peak_in_the_centre() -> None:
    w = gaussian_importance((8, 16, 16))
    assert w.max() <= 1.0 and w.min() >= 1e-3 - 1e-9
    assert w[4, 8, 8] > w[0, 0, 0]


@pytest.mark.parametrize(
    "kwargs", [{"roi_size": (8, 8)}, {"roi_size": (0, 8, 8)}, {"roi_size": (8, 8, 8), "overlap": 1.0},
               {"roi_size": (8, 8, 8), "batch_size": 0}],
)
def test_bad_configurations_raise(kwargs) -> None:
    with pytest.raises(ValueError):
        SlidingWindow(**kwargs)


def test_predictor_with_wrong_output_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="predictor returned"):
        SlidingWindow(roi_size=(4, 4, 4))(np.zeros((4, 4, 4), np.float32), lambda p: p[:, :, :2])
    with pytest.raises(ValueError, match="3D"):
        SlidingWindow(roi_size=(4, 4, 4))(np.zeros((4, 4), np.float32), plus_one)


def _noisy_predictor(classes: int = 5, seed: int = 0):
    """Logits that depend on the patch content and on the position inside the window, so blending matters."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(classes, 1, 1, 1, 1)).astype(np.float32)
    ramp = rng.normal(size=(classes, 1, 1, 1, 1)).astype(np.float32)

    def predict(patches: np.ndarray) -> np.ndarray:
        d = patches.shape[2]
        position = np.linspace(-1, 1, d, dtype=np.float32)[None, None, :, None, None]
        return (patches * mix.transpose(1, 0, 2, 3, 4) + position * ramp.transpose(1, 0, 2, 3, 4)).astype(
            np.float32)

    return predict


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "batch"),
    [((37, 20, 23), (8, 8, 8), 0.5, 2), ((40, 16, 16), (16, 16, 16), 0.0, 3), ((9, 30, 12), (16, 8, 8), 0.25, 1),
     ((50, 12, 12), (12, 12, 12), 0.75, 4)],
    ids=["half-overlap", "no-overlap", "padded-z", "three-quarters"],
)
def test_streamed_argmax_equals_the_argmax_of_the_full_logits(shape, roi, overlap, batch) -> None:
    """Issue #25, item 3: labels streamed slab by slab are the full logits' argmax, voxel for voxel."""
    volume = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    inferer = SlidingWindow(roi_size=roi, overlap=overlap, batch_size=batch)
    predict = _noisy_predictor()
    full = np.argmax(inferer(volume, predict), axis=0).astype(np.uint8)
    streamed = inferer.argmax(volume, predict)
    assert streamed.dtype == np.uint8 and streamed.shape == shape
    np.testing.assert_array_equal(streamed, full)
    assert len(np.unique(full)) > 1  # a constant answer would prove nothing


def test_streamed_argmax_holds_one_slab_of_logits(monkeypatch) -> None:
    """The only float buffer of ``argmax`` is (C, roi_z, H, W), however deep the volume."""
    import services.common.sliding_window as sw

    sizes = []
    real_zeros = np.zeros

    def spy(shape, dtype=float, *args, **kwargs):
        array = real_zeros(shape, dtype, *args, **kwargs)
        if np.dtype(dtype) == np.float32 and len(np.shape(array)) == 4:
            sizes.append(array.shape)
        return array

    monkeypatch.setattr(sw.np, "zeros", spy)
    volume = np.zeros((96, 16, 16), np.float32)
    SlidingWindow(roi_size=(8, 16, 16), overlap=0.5).argmax(volume, _noisy_predictor(classes=3))
    assert sizes == [(3, 8, 16, 16)]

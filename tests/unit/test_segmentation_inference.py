"""Reference inference: geometry kept, exact stitching with known predictors."""

from __future__ import annotations

import numpy as np

from services.common.volume import Volume
from services.segmentation.inference import Segmenter, softmax
from services.segmentation.preprocessing import normalise


def _threshold_predictor(batch: np.ndarray) -> np.ndarray:
    """Class 1 where the normalised intensity is above 0 (HU > 0), else class 0: exactly known logits."""
    return np.concatenate([-batch, batch], axis=1) * 10


def test_segment_returns_labels_on_the_input_grid() -> None:
    hu = np.full((20, 40, 50), -1000.0, np.float32)
    hu[5:15, 10:30, 10:40] = 400.0
    ct = Volume(hu, spacing=(1.5, 1.5, 2.0), origin=(10.0, -5.0, 3.0), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1))
    seg = Segmenter(patch_size=(8, 16, 16), overlap=0.5, batch_size=3)
    labels = seg(ct, _threshold_predictor)
    assert labels.same_grid(ct) and labels.array.dtype == np.uint8
    inner = labels.array[7:13, 13:27, 13:37]
    assert np.all(inner == 1) and labels.array[0, 0, 0] == 0
    truth = hu > 0
    assert (labels.array.astype(bool) == truth).mean() > 0.95  # 3 mm model grid: boundary voxels differ


def test_probabilities_sum_to_one() -> None:
    ct = Volume(np.random.default_rng(0).uniform(-500, 500, (12, 20, 20)).astype(np.float32), (3.0, 3.0, 3.0))
    grid, prob = Segmenter(patch_size=(8, 16, 16)).probabilities(ct, _threshold_predictor)
    assert prob.shape == (2, *grid.shape)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
    assert np.all(prob.argmax(0) == (grid.array > 0))


def test_softmax_and_normalise() -> None:
    x = np.array([[1.0, 2.0], [3.0, 2.0]])
    np.testing.assert_allclose(softmax(x.copy(), axis=0).sum(0), 1.0)
    np.testing.assert_allclose(normalise(np.array([-2048, -1000, 0, 1000, 3000])), [-1, -1, 0, 1, 1])

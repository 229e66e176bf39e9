"""The umcam evaluation's scoring helpers: 3-D Dice with a slice bootstrap, HD95, the trivial baseline."""

from __future__ import annotations

import numpy as np
import pytest

from services.umcam.evaluation import Scored, dice_comparison, hd95, head_baseline


def _cube(shift: int = 0) -> np.ndarray:
    mask = np.zeros((20, 20, 20), bool)
    mask[5:15, 5 + shift:15 + shift, 5:15] = True
    return mask


def test_hd95_of_a_shifted_cube_is_the_shift_in_mm():
    assert hd95(_cube(), _cube(), (1.0, 1.0, 1.0)) == 0
    assert hd95(_cube(2), _cube(), (1.0, 2.0, 1.0)) == pytest.approx(4.0)
    assert hd95(np.zeros((4, 4, 4), bool), _cube(), (1.0, 1.0, 1.0)) == float("inf")


def test_dice_and_its_slice_bootstrap():
    reference = _cube()
    perfect = Scored("perfect", [reference.astype(np.uint8)], reference, (1.0, 1.0, 1.0))
    shifted = Scored("shifted", [_cube(2).astype(np.uint8), _cube(4).astype(np.uint8)], reference, (1.0, 1.0, 1.0))
    assert perfect.dice() == pytest.approx(1.0)
    assert shifted.dice() == pytest.approx((0.8 + 0.6) / 2)  # seeds are averaged
    comparison = dice_comparison("perfect vs shifted", perfect, shifted, "shifted", [0, 1])
    assert comparison.ours_wins and comparison.ci95 is not None
    assert comparison.ci95[0] <= 0.3 <= comparison.ci95[1]


def test_head_baseline_keeps_the_head_and_fills_it():
    image = np.zeros((20, 30, 30), np.float32)
    image[2:18, 5:25, 5:25] = 100.0
    image[8:12, 12:18, 12:18] = 0.0  # a dark hole inside: filled
    image[0, 0, 0] = 100.0  # a stray bright voxel: dropped
    mask = head_baseline(image)
    assert mask[10, 15, 15] == 1 and mask[0, 0, 0] == 0 and mask.sum() == 16 * 20 * 20

"""Metrics: Dice, HD95 in mm, HU-threshold lung mask."""

from __future__ import annotations

import math

import numpy as np

from services.common.volume import Volume
from services.segmentation.evaluate import dice, hd95, hu_lung_mask


def test_dice_of_known_overlap() -> None:
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:, :, :5] = True
    b[:, :, 2:7] = True
    assert math.isclose(dice(a, b), 2 * 300 / 1000)
    assert math.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_hd95_of_shifted_cube_in_mm() -> None:
    a = np.zeros((30, 30, 30), bool)
    a[10:20, 10:20, 10:20] = True
    b = np.roll(a, 2, axis=2)
    assert math.isclose(hd95(a, a, (1.0, 1.0, 1.0)), 0.0)
    assert math.isclose(hd95(a, b, (2.5, 1.0, 0.5)), 2 * 0.5)
    assert math.isnan(hd95(a, np.zeros_like(a), (1.0, 1.0, 1.0)))


def test_hu_lung_mask_keeps_inner_air_only() -> None:
    hu = np.full((8, 60, 60), -1000.0, np.float32)  # outside air touches the border
    hu[:, 5:55, 5:55] = 40.0  # body
    hu[:, 15:45, 10:28] = -850.0  # right lung
    hu[:, 15:45, 32:50] = -850.0  # left lung
    hu[:, 50:52, 30:31] = -900.0  # a small gas pocket: dropped (< 5 % of the largest component)
    mask = hu_lung_mask(Volume(hu, (1.0, 1.0, 1.0)))
    assert mask[:, 20, 15].all() and mask[:, 20, 40].all()
    assert not mask[:, 0, 0].any() and not mask[:, 51, 30].any()

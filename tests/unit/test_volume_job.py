"""services.segmentation.job: manifest-driven preparation and a whole job with an exact predictor."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.volume import Volume, read_volume, write_volume
from services.segmentation.job import ModelCard, keep_largest_components, run_segmentation
from services.segmentation.preprocessing import to_model_grid


def _card(**pre: object) -> ModelCard:
    manifest = {
        "model": "test_seg", "version": 3, "sha256": "ab" * 32,
        "preprocessing": {"classes": ["background", "bright"], "patch_size": [8, 16, 16], **pre},
    }
    return ModelCard.from_manifest(manifest)


def _ct() -> Volume:
    """A bright ellipsoid (soft tissue, 40 HU) in air with noise."""
    z, y, x = np.mgrid[:20, :40, :30]
    inside = ((z - 10) / 7) ** 2 + ((y - 18) / 12) ** 2 + ((x - 14) / 9) ** 2 < 1
    hu = np.where(inside, 40, -1000) + np.random.default_rng(0).normal(0, 20, inside.shape)
    hu = hu.astype(np.int16)
    return Volume(hu, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.0, 5.0),
                  direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # RAS-style axes, not LPS


def test_raw_hu_model_sees_the_input_unchanged() -> None:
    ct = _ct()
    grid = to_model_grid(ct, _card(orientation="any").spec)
    assert grid.same_grid(ct)
    np.testing.assert_array_equal(grid.array, ct.array.astype(np.float32))


def test_windowed_model_gets_lps_its_spacing_and_minus_one_to_one() -> None:
    grid = to_model_grid(_ct(), _card(orientation="LPS", spacing=[2.0, 2.0, 2.0], clip_hu=[-1000, 1000]).spec)
    assert grid.orientation_code() == "LPS"
    assert grid.spacing == (2.0, 2.0, 2.0)
    assert grid.array.min() >= -1.0 and grid.array.max() <= 1.0


def test_job_with_a_threshold_predictor_overlays_the_input(tmp_path: Path) -> None:
    ct = _ct()
    path = write_volume(ct, tmp_path / "ct.nii.gz")

    def threshold(patches: np.ndarray) -> np.ndarray:  # class 1 where the normalised value > 0 (HU > 0)
        return np.concatenate([np.zeros_like(patches), patches], axis=1)

    card = _card(orientation="LPS", spacing=[1.6, 1.8, 2.5], clip_hu=[-1000, 1000])
    summary = run_segmentation(path, tmp_path / "out", card, threshold)
    mask = read_volume(tmp_path / "out" / "mask.nii.gz")
    assert mask.same_grid(ct)
    truth, found = ct.array > -500, mask.array == 1
    dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
    assert dice > 0.9, dice  # only the coarser model grid blurs the edge
    assert summary["model"] == {"name": "test_seg", "version": "3", "sha256": "ab" * 32}
    assert [s["name"] for s in summary["structures"]] == ["bright"]
    assert (tmp_path / "out" / "preview.png").stat().st_size > 0


def test_largest_component_drops_islands_per_class() -> None:
    labels = np.zeros((10, 20, 20), np.uint8)
    labels[2:6, 2:8, 2:8] = 1  # main liver
    labels[8, 18, 18] = 1  # a stray voxel of the same class
    labels[2:4, 12:16, 12:16] = 2
    kept = keep_largest_components(labels)
    assert kept[8, 18, 18] == 0
    assert (kept == 1).sum() == 4 * 6 * 6 and (kept == 2).sum() == 2 * 4 * 4

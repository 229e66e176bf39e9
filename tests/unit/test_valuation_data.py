"""Valuation inputs: .npz and image-zip formats, held-out splits, combined errors, the organ-patch set."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.valuation.data import (
    ClassificationSet,
    DatasetFormatError,
    digits,
    load_dataset,
    load_image_zip,
    load_npz,
    organ_patches,
    save_npz,
    slab_split,
)


def _arrays(n: int = 60, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, 12, 10)).astype(np.float32), "y": np.arange(n) % classes}


def test_npz_minimal_gets_ids_and_a_stratified_split(tmp_path: Path) -> None:
    np.savez(tmp_path / "set.npz", **_arrays())
    ds = load_npz(tmp_path / "set.npz", test_fraction=0.2, seed=1)
    assert ds.x.shape == (60, 1, 12, 10) and ds.x.dtype == np.float32
    assert ds.class_names == ["0", "1", "2"]
    assert ds.test.sum() == 12 and np.bincount(ds.y[ds.test]).tolist() == [4, 4, 4]
    assert len(set(ds.ids)) == 60


def test_npz_explicit_split_string_labels_and_round_trip(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["y"] = np.array(["liver", "lung", "spleen"])[arrays["y"]]
    arrays["split"] = np.where(np.arange(60) < 45, "train", "test")
    arrays["ids"] = np.array([f"case{i}" for i in range(60)])
    np.savez(tmp_path / "a.npz", **arrays)
    ds = load_npz(tmp_path / "a.npz")
    assert ds.class_names == ["liver", "lung", "spleen"]
    np.testing.assert_array_equal(ds.test, np.arange(60) >= 45)
    save_npz(ds, tmp_path / "b.npz")
    again = load_dataset(tmp_path / "b.npz")
    np.testing.assert_array_equal(again.x, ds.x)
    np.testing.assert_array_equal(again.y, ds.y)
    np.testing.assert_array_equal(again.test, ds.test)
    assert list(again.ids) == list(ds.ids) and again.class_names == ds.class_names


def test_npz_groups_never_straddle_the_split(tmp_path: Path) -> None:
    arrays = _arrays(90)
    arrays["groups"] = np.array([f"patient{i // 9}" for i in range(90)])
    np.savez(tmp_path / "g.npz", **arrays)
    ds = load_npz(tmp_path / "g.npz", test_fraction=0.3)
    for g in np.unique(ds.groups):
        assert len(set(ds.test[ds.groups == g])) == 1
    assert 0 < ds.test.sum() < 90


def test_npz_problems_are_reported_together(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 1, 4, 4))
    x[0, 0, 0, 0] = np.nan
    np.savez(tmp_path / "bad.npz", x=x, y=np.zeros(10, dtype=int), ids=np.array(["a"] * 10))
    with pytest.raises(DatasetFormatError) as err:
        load_npz(tmp_path / "bad.npz")
    message = str(err.value)
    for part in ("at least 8×8", "NaN", "2 classes", "unique", "20 training samples"):
        assert part in message
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    with pytest.raises(DatasetFormatError, match="lacks the arrays"):
        load_npz(tmp_path / "nox.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetFormatError, match="not a readable"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(DatasetFormatError, match="unsupported"):
        load_dataset(tmp_path / "x.nii.gz")


def _zip(path: Path, n: int = 30, size: tuple[int, int] = (16, 12), odd: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(n):
            shape = (size[1] + 1, size[0]) if i == odd else (size[1], size[0])
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, format="PNG")
            zf.writestr(f"images/img{i:03d}.png", buf.getvalue())
            rows.append({"file": f"images/img{i:03d}.png", "label": ["benign", "malignant"][i % 2],
                         "split": "test" if i >= 24 else "train"})
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=["file", "label", "split"])
        w.writeheader()
        w.writerows(rows)
        zf.writestr("labels.csv", text.getvalue())
    return path


def test_image_zip_with_labels_csv(tmp_path: Path) -> None:
    ds = load_dataset(_zip(tmp_path / "images.zip"))
    assert ds.x.shape == (30, 1, 12, 16) and 0 <= ds.x.min() and ds.x.max() <= 1
    assert ds.class_names == ["benign", "malignant"]
    assert ds.test.sum() == 6 and ds.ids[0] == "images/img000.png"


def test_image_zip_of_mixed_sizes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="differ in size"):
        load_image_zip(_zip(tmp_path / "mixed.zip", odd=3))


def test_slab_split_keeps_a_gap_between_training_and_held_out_slices() -> None:
    train, test = slab_split(133)
    assert not (train & test).any()
    held = np.flatnonzero(test)
    for z in np.flatnonzero(train):
        assert np.abs(held - z).min() > 2
    assert 0.15 < test.mean() < 0.35


def test_digits_is_the_bundled_set() -> None:
    ds = digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.max() <= 1.0
    assert ds.test.sum() == 450 and len(ds.class_names) == 10


@pytest.mark.slow
def test_organ_patches_from_the_real_ct_split_by_slab() -> None:
    ds = organ_patches(per_class_train=40, per_class_test=15)
    assert isinstance(ds, ClassificationSet)
    assert ds.x.shape[1:] == (1, 32, 32) and len(ds.class_names) == 10
    z = np.array([int(i.split("_z")[1][:3]) for i in ds.ids])
    train_z, test_z = set(z[~ds.test]), set(z[ds.test])
    assert min(abs(a - b) for a in train_z for b in test_z) > 2
    counts = ds.describe()["classes"]
    assert all(a == 40 and b == 15 for a, b in counts.values()), counts
    # lung patches are mostly air, bone (vertebra) patches are dense: the labels mean something
    lung, vertebra = ds.class_names.index("lung"), ds.class_names.index("vertebra")
    centre = ds.x[:, 0, 14:18, 14:18].mean(axis=(1, 2))
    assert centre[ds.y == lung].mean() < -0.6 < 0.1 < centre[ds.y == vertebra].mean()


def test_label_noise_changes_only_training_labels_to_another_class() -> None:
    from services.valuation.data import digits, with_label_noise

    ds = digits()
    noisy = with_label_noise(ds, 0.2, seed=3)
    changed = noisy.y != ds.y
    assert not changed[ds.test].any()
    assert changed.sum() == round(0.2 * (~ds.test).sum())
    assert sorted(noisy.notes["noisy_ids"]) == sorted(ds.ids[changed].tolist())
    np.testing.assert_array_equal(with_label_noise(ds, 0.2, seed=3).y, noisy.y)  # seeded


def test_class_imbalance_thins_training_classes_only() -> None:
    from services.valuation.data import digits, with_class_imbalance

    ds = digits()
    imb = with_class_imbalance(ds, 10.0)
    assert imb.test.sum() == ds.test.sum()
    counts = np.bincount(imb.y[~imb.test], minlength=10)
    full = np.bincount(ds.y[~ds.test], minlength=10)
    assert counts[0] == full[0] and abs(counts[9] - full[9] / 10) <= 1
    assert (np.diff(counts / full) <= 1e-9).all()
    with pytest.raises(ValueError):
        with_class_imbalance(ds, 0.5)

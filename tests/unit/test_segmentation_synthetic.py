"""Synthetic labelled CT from a label-map template (a small hand-made template, no real data)."""

from __future__ import annotations

import numpy as np

from services.common.volume import Volume
from services.segmentation.labels import class_index
from services.segmentation.preprocessing import PreprocessingSpec
from services.segmentation.synthetic import SyntheticCT, Template

STRUCTURES = {5: "liver", 10: "lung_upper_lobe_left", 12: "lung_upper_lobe_right", 31: "vertebrae_L1",
              20: "colon"}


def _template() -> Template:
    labels = np.zeros((24, 48, 48), np.uint8)
    labels[4:20, 10:24, 8:22] = 12  # LPS: low x = patient right
    labels[4:20, 10:24, 26:40] = 10
    labels[10:20, 26:36, 10:30] = 5
    labels[4:20, 36:42, 21:27] = 31
    labels[12:18, 26:32, 32:40] = 20
    spec = PreprocessingSpec(spacing=(3.0, 3.0, 3.0))
    return Template.from_labels(Volume(labels, (3.0, 3.0, 3.0)), STRUCTURES, spec)


def test_sample_shapes_classes_and_hu_ranges() -> None:
    gen = SyntheticCT(_template())
    image, target = gen.sample(np.random.default_rng(0), (16, 32, 32), center=np.array([12.0, 24.0, 24.0]))
    assert image.shape == target.shape == (16, 32, 32)
    assert image.dtype == np.float32 and target.dtype == np.uint8
    assert set(np.unique(target)) <= {0, class_index("liver"), class_index("lung_left"), class_index("lung_right"),
                                      class_index("vertebral_column")}
    lung = target == class_index("lung_left")
    assert lung.any() and np.median(image[lung]) < -600  # lungs are painted as air-like tissue
    bone = target == class_index("vertebral_column")
    assert bone.any() and np.median(image[bone]) > np.median(image[lung]) + 500


def test_same_seed_same_sample() -> None:
    gen = SyntheticCT(_template())
    a = gen.sample(np.random.default_rng(4), (16, 32, 32))
    b = gen.sample(np.random.default_rng(4), (16, 32, 32))
    c = gen.sample(np.random.default_rng(5), (16, 32, 32))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_body_hull_marks_unlabelled_tissue_inside_only() -> None:
    tpl = _template()
    assert (tpl.codes % 256 == 250).any()  # unlabelled tissue between the organs
    assert tpl.codes[0, 0, 0] == 0 and tpl.outside_mm[0, 0, 0] > 0


def test_balanced_centres_give_each_served_class_a_fair_share() -> None:
    # the lungs hold 70 % of this template's served voxels; class-balanced centres must not follow that
    gen = SyntheticCT(_template())
    served = gen._lut[gen.template.codes % 256]
    classes = [c for c in np.unique(served) if c > 0]
    centroids = np.array([np.argwhere(served == c).mean(axis=0) for c in classes])
    rng = np.random.default_rng(0)
    centres = np.array([gen.balanced_centre(rng) for _ in range(2000)])
    nearest = np.linalg.norm(centres[:, None] - centroids[None], axis=2).argmin(axis=1)
    share = np.bincount(nearest, minlength=len(classes)) / len(centres)
    assert len(classes) == 4  # liver, both lungs, vertebral column (colon is not a served class)
    assert np.all((share > 0.15) & (share < 0.35)), share

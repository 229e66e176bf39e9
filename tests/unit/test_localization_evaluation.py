"""The localization evaluation without a model: the two copy baselines (world mm; aligned by the body
outline), box scores, pairing MedLAM and baselines over (structure × query) samples, the label-free
chest derivations, and the training sampler's exact displacement targets."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.volume import Volume
from services.localization.evaluate import (
    align_box,
    aligned_copy,
    box_scores,
    clip_box,
    copied_box,
    summarize,
    template_box,
)
from services.localization.evaluation import Slice, comparisons
from services.localization.queries import body_mask, derive_chest_structures
from services.localization.train_medlam import SpatialAugment, sample_crop, similarity_loss
from services.localization.volumes import GridVolume


def _template(lo: tuple[int, int, int], hi: tuple[int, int, int], spacing: float = 5.0) -> GridVolume:
    mask = np.zeros((20, 20, 20), bool)
    mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
    volume = Volume(np.zeros(mask.shape, np.float32), (spacing,) * 3, origin=(-10.0, 0.0, 100.0))
    return GridVolume("t", volume, {"organ": mask})


def test_template_box_is_the_mask_box_in_world_mm_over_voxel_edges() -> None:
    lo, hi = template_box(_template((2, 3, 4), (5, 7, 9)), "organ")
    np.testing.assert_allclose(lo, [-10 + 17.5, 12.5, 100 + 7.5])
    np.testing.assert_allclose(hi, [-10 + 47.5, 37.5, 100 + 27.5])


def test_copied_box_averages_each_wall_over_the_templates() -> None:
    a, b = _template((2, 2, 2), (5, 5, 5)), _template((4, 2, 2), (9, 5, 7))
    lo, hi = copied_box([a, b], "organ")
    (lo_a, hi_a), (lo_b, hi_b) = template_box(a, "organ"), template_box(b, "organ")
    np.testing.assert_allclose(lo, (lo_a + lo_b) / 2)
    np.testing.assert_allclose(hi, (hi_a + hi_b) / 2)


def test_aligned_copy_maps_the_template_body_box_onto_the_query_body_box() -> None:
    body = (np.array([0.0, 0.0, 0.0]), np.array([100.0, 200.0, 300.0]))
    query_body = (np.array([50.0, -20.0, 10.0]), np.array([250.0, 180.0, 160.0]))  # moved, x2 in x, /2 in z
    box = (np.array([10.0, 20.0, 30.0]), np.array([20.0, 40.0, 60.0]))
    lo, hi = align_box(box, body, query_body)
    np.testing.assert_allclose(lo, [70.0, 0.0, 25.0])
    np.testing.assert_allclose(hi, [90.0, 20.0, 40.0])
    template = _template((2, 2, 2), (5, 5, 5))
    own_body = template_box(template, "organ")
    aligned = aligned_copy([template], [own_body], query_body, "organ")  # the organ is its own body here
    np.testing.assert_allclose(aligned[0], query_body[0])
    np.testing.assert_allclose(aligned[1], query_body[1])


def test_box_scores_and_clipping_to_the_field_of_view() -> None:
    truth = (np.zeros(3), np.full(3, 10.0))
    shifted = (np.array([3.0, 0.0, 0.0]), np.array([13.0, 10.0, 10.0]))
    scores = box_scores(shifted, truth)
    assert scores["iou"] == pytest.approx(7 / 13) and scores["wall_mm"] == pytest.approx(1.0)
    assert scores["centre_mm"] == pytest.approx(3.0)
    lo, hi = clip_box(shifted, (np.full(3, -50.0), np.full(3, 10.0)))
    np.testing.assert_allclose(hi, [10.0, 10.0, 10.0])
    assert box_scores((lo, hi), truth)["iou"] == pytest.approx(0.7)


def _rows(medlam: list[float], copy: list[float], aligned: list[float]) -> list[dict]:
    rows = []
    for q in range(2):
        for i, values in enumerate(zip(medlam, copy, aligned, strict=True)):
            for method, iou in zip(("medlam", "copy", "aligned_copy"), values, strict=True):
                for shots in (1, 2):
                    rows.append({"query": f"q{q}", "kind": "shifted", "structure": f"s{i}", "shots": shots,
                                 "method": method, "iou": iou, "wall_mm": 10 * (1 - iou), "centre_mm": 1 - iou})
    return rows


def test_comparisons_pair_medlam_and_each_baseline_over_structure_and_query() -> None:
    rows = _rows([0.6, 0.7, 0.8], [0.1, 0.2, 0.1], [0.5, 0.5, 0.5])
    spec = Slice(shots=(1, 2), shift_seeds=(0, 1), structures=("s0", "s1", "s2"), shipped=False, lung=False)
    found = {c.name: c for c in comparisons(rows, spec)}
    iou = found["box IoU, 2-shot, shifted queries vs aligned_copy"]
    assert iou.ours == pytest.approx(70.0) and iou.baseline == pytest.approx(50.0) and iou.ours_wins
    assert "6 (structure x query) samples" in iou.samples and iou.ci95 is not None and iou.ci95[0] > 0
    wall = found["wall distance, 2-shot, shifted queries vs copy"]
    assert wall.higher_is_better is False and wall.ours_wins and wall.tolerance == 3.0
    assert "box IoU, 1-shot, shifted queries vs copy" in found
    assert "wall distance, 1-shot, shifted queries vs copy" not in found  # distances at the largest k only
    assert summarize(rows, "shifted")["medlam_2shot"]["iou"] == pytest.approx(70.0)


def _chest_phantom() -> Volume:
    """An LPS chest: a body cylinder (40 HU), two air lungs and a trachea from the top slice down to
    the lungs' top, where it ends."""
    hu = np.full((30, 100, 100), -1000, np.int16)
    z, y, x = np.indices(hu.shape)
    hu[((y - 50) ** 2 + (x - 50) ** 2) < 45 ** 2] = 40
    lungs = (z >= 2) & (z < 20) & (np.abs(y - 50) < 20)
    hu[lungs & (x > 15) & (x < 42)] = -850  # x < 50: patient right in LPS
    hu[lungs & (x > 58) & (x < 85)] = -850
    hu[(z >= 18) & ((y - 40) ** 2 + (x - 50) ** 2 < 16)] = -1000  # trachea, ~2 cm diameter at 2 mm
    return Volume(hu, (2.0, 2.0, 5.0))


def test_chest_structures_are_derived_from_hu() -> None:
    ct = _chest_phantom()
    assert body_mask(ct.array).sum() > 0.9 * (np.pi * 45 ** 2 * 30)
    masks, notes = derive_chest_structures(ct)
    assert set(masks) >= {"body", "trachea", "lung_left", "lung_right"}
    assert np.nonzero(masks["lung_left"])[2].min() > 50 and np.nonzero(masks["lung_right"])[2].max() < 50
    trachea_z = np.nonzero(masks["trachea"])[0]
    assert trachea_z.max() == 29 and trachea_z.min() >= 18
    assert "two largest" in notes["lungs"]


def test_paired_crops_of_a_deformed_volume_agree_with_their_displacement() -> None:
    """The RDR target is the displacement of two crops of the same deformed volume: voxel v of crop a
    is voxel v + (start a − start b) of crop b."""
    rng = np.random.default_rng(0)
    array = rng.random((40, 40, 40)).astype(np.float32)
    transform = SpatialAugment().sample(array.shape, rng)
    a, b = np.array([20, 20, 20]), np.array([23, 18, 21])
    crop_a, crop_b = sample_crop(array, a, 16, transform), sample_crop(array, b, 16, transform)
    shift = a - b
    np.testing.assert_allclose(crop_a[4:10, 4:10, 4:10], crop_b[4 + shift[0]:10 + shift[0], 4 + shift[1]:10 + shift[1],
                                                                  4 + shift[2]:10 + shift[2]], rtol=1e-5)
    identity = SpatialAugment(scale=(1.0, 1.0), rotate_z_deg=0.0, rotate_xy_deg=0.0, elastic_voxels=0.0)
    plain = sample_crop(array, a, 16, identity.sample(array.shape, rng))
    np.testing.assert_allclose(plain, array[12:28, 12:28, 12:28], rtol=1e-5)


def test_similarity_loss_rewards_mass_on_positives_and_penalises_negatives() -> None:
    import torch

    positive = torch.tensor([[True, False, False, False]])
    negative = torch.tensor([[False, False, True, True]])
    good = torch.log_softmax(torch.tensor([[5.0, 0.0, -5.0, -5.0]]), dim=1)
    bad = torch.log_softmax(torch.tensor([[-5.0, 0.0, 5.0, -5.0]]), dim=1)
    assert similarity_loss(good, positive, negative) < 0.1 < similarity_loss(bad, positive, negative)

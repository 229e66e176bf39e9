"""Template registration, few-shot localization and MedLSAM segmentation of one uploaded volume.

Pure functions over a loaded volume and two ``predict`` callables (Triton in the worker, PyTorch in
tests), so the logic is testable without a broker. Coordinates at the API: voxel indices (i, j, k)
of the uploaded file (x, y, z order, as NIfTI/ITK) and millimetres in the DICOM patient frame (LPS).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.common.dicom_seg import write_segmentation
from services.common.dicom_series import DicomSeries
from services.common.preview import write_preview
from services.common.volume import Interpolator, Volume, resample_like, write_volume
from services.localization.boxseg import to_slice_grid
from services.localization.geometry import mm_to_voxel, voxel_to_mm, world_box
from services.localization.medlam import Predict, QueryAnchor, StructureEmbedding, embed_points, localize
from services.localization.medlsam import SegPredict, label_map
from services.localization.preprocessing import to_grid
from workers.job_runner import JobInputError

MASK_NAME, SUMMARY_NAME, PREVIEW_NAME, SEG_NAME, RESULT_NAME = (
    "mask.nii.gz", "summary.json", "preview.png", "seg.dcm", "result.json")


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


def localize_structures(original: Volume, templates: Sequence[Mapping[str, StructureEmbedding]],
                        structures: Sequence[str], predict: Predict, seed: int = 0) -> dict[str, dict[str, Any]]:
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
    names = {0: "background"} | {i: n for i, n in enumerate(boxes, start=1)}
    return write_preview(original, original.with_array(outlines), names, path)


def _r(values: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in values]


def segment_boxes(original: Volume, boxes: Mapping[str, Mapping[str, Any]], predict: SegPredict) -> Volume:
    """MedLSAM: a label map on the input grid, label i+1 for the i-th structure of ``boxes``."""
    slices = to_slice_grid(original)
    world = [(np.asarray(b["box_mm"]["min"]), np.asarray(b["box_mm"]["max"])) for b in boxes.values()]
    labels = slices.with_array(label_map(slices, world, predict))
    mask = resample_like(labels, original, Interpolator.NEAREST)
    return mask.with_array(mask.array.astype(np.uint8))


def write_outputs(out_dir: Path, original: Volume, mask: Volume, names: Sequence[str], summary: dict[str, Any],
                  model: dict[str, str], series: DicomSeries | None, dicom_seg: bool) -> list[str]:
    """mask.nii.gz, preview.png, optionally seg.dcm, then summary.json; returns the artifact names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{MASK_NAME}"  # write-then-rename: a rerun never leaves half a mask
    write_volume(mask, tmp)
    tmp.replace(out_dir / MASK_NAME)
    classes = {0: "background"} | {i: n for i, n in enumerate(names, start=1)}
    write_preview(original, mask, classes, out_dir / PREVIEW_NAME)
    artifacts = [MASK_NAME, SUMMARY_NAME, PREVIEW_NAME]
    if dicom_seg and series is not None and mask.array.any():
        write_segmentation(mask.array, series, classes, model, out_dir / SEG_NAME)
        artifacts.append(SEG_NAME)
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    counts = np.bincount(mask.array.ravel(), minlength=len(names) + 1)
    summary = summary | {"labels": [{"label": i, "name": n, "volume_ml": round(float(counts[i]) * voxel_ml, 3)}
                                    for i, n in classes.items() if i > 0], "artifacts": artifacts}
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    return artifacts

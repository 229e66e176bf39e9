"""The UM-CAM family's served jobs as plain functions (issue #20).

- `run_brain_extraction`: a T1 MR volume → the U-Net trained on UM-CAM + GSE pseudo-labels, slice
  by slice in batches → the brain mask on the input grid, with the artifacts every mask job writes
  (``services/common/job_io.py``: mask, preview, DICOM SEG for DICOM input, summary with mL).
- `run_pseudo_labels`: the weak-supervision workflow as a service — a volume plus one 0/1 label per
  slice → the classifier's presence probability and CAMs for every slice, the UM-CAM fusion, and GSE
  pseudo-labels in the slices the user labelled present (slices labelled absent are background).

Both take their predictor from the caller (the worker passes Triton, tests pass ONNX Runtime or a
known function) and the model facts and modality from the served manifest, so they run the same in
a worker, an evaluation and a test. Slicing and the way back onto the input grid are
``services/umcam/grid.py``'s, the one place training, evaluation and serving share.

    summary = run_brain_extraction(Path("t1.nii.gz"), Path("out"), facts, predict, modality="MR")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from services.common.job_io import (
    SUMMARY_NAME,
    JobInputError,
    Progress,
    Stopwatch,
    check_input_modality,
    describe_input,
    load_input,
    no_progress,
    structure_volumes,
    write_json,
    write_mask_outputs,
)
from services.common.volume import Volume, write_volume
from services.segmentation.job import keep_largest_components
from services.umcam.grid import SliceGrid, from_model_slices, to_model_slices
from services.umcam.pseudo_labels import expand_seeds_batch, fuse_cams
from services.umcam.slice_labels import MISMATCH_KIND, check_slice_count

__all__ = ["BATCH_SLICES", "BRAIN_CLASSES", "UMCAM_NAME", "brain_probability", "pseudo_label_slices",
           "run_brain_extraction", "run_pseudo_labels"]

# (B, 1, 128, 128) slices → (B, 2, 128, 128) logits (background, brain)
SlicePredict = Callable[[np.ndarray], np.ndarray]
# (B, 1, 128, 128) slices → presence probability (B, 1), CAMs at three resolutions (B, 3, 128, 128) in [0, 1]
CamPredict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

BRAIN_CLASSES = {0: "background", 1: "brain"}
BATCH_SLICES = 32  # slices per Triton call: the served models' max_batch_size (tests/unit/test_umcam_job.py)
UMCAM_NAME = "umcam.nii.gz"
AXIS_KIND = "slice-axis-not-axial"


def _in_batches(slices: np.ndarray, predict: Callable[[np.ndarray], Any], batch_size: int,
                progress: Callable[[float], None]) -> list[Any]:
    outputs = []
    for start in range(0, len(slices), batch_size):
        outputs.append(predict(np.ascontiguousarray(slices[start:start + batch_size], dtype=np.float32)))
        progress(min(1.0, (start + batch_size) / len(slices)))
    return outputs


def _softmax_brain(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


def brain_probability(volume: Volume, predict: SlicePredict, batch_size: int = BATCH_SLICES,
                      progress: Callable[[float], None] = lambda f: None) -> np.ndarray:
    """The U-Net's brain probability on ``volume``'s own grid, (z, y, x) float32."""
    slices, grid = to_model_slices(volume)
    logits = np.concatenate(_in_batches(slices, predict, batch_size, progress))
    return np.asarray(from_model_slices(_softmax_brain(logits), grid), dtype=np.float32)


def run_brain_extraction(
    input_path: Path, out_dir: Path, model: Mapping[str, str], predict: SlicePredict,
    progress: Progress = no_progress, *, modality: str = "MR", batch_size: int = BATCH_SLICES,
    largest_component: bool = True, series_uid: str | None = None, allow_modality_mismatch: bool = False,
) -> dict[str, Any]:
    """Brain mask of one T1 MR volume; writes ``mask.nii.gz`` (input geometry), ``summary.json`` (brain
    volume in mL), ``preview.png`` and, for DICOM input, ``seg.dcm``; returns the summary.

    ``model``: name, version, sha256 of the served U-Net. An input that is not ``modality`` fails
    with ``modality-mismatch`` / ``not-mr`` unless ``allow_modality_mismatch``."""
    watch = Stopwatch()
    progress("loading", 0.0)
    original, series = load_input(input_path, series_uid)
    input_check = check_input_modality(original, series, modality, allow_modality_mismatch)
    watch.mark("load")
    probability = brain_probability(original, predict, batch_size,
                                    lambda f: progress("inference", 0.05 + 0.8 * f))
    watch.mark("inference")
    progress("postprocessing", 0.9)
    labels = (probability >= 0.5).astype(np.uint8)
    if largest_component:
        labels = keep_largest_components(labels)
    mask = original.with_array(labels)
    artifacts = write_mask_outputs(out_dir, original, mask, BRAIN_CLASSES, model, series, preview_window=None)
    watch.mark("postprocess")
    summary = {
        "model": dict(model),
        "input": describe_input(input_path, original, series),
        "input_check": input_check,
        "structures": structure_volumes(mask, {1: "brain"}),
        "postprocessing": {"threshold": 0.5, "largest_component": largest_component},
        "timings_s": watch.timings,
        "artifacts": artifacts,
    }
    write_json(out_dir / SUMMARY_NAME, summary)
    progress("done", 1.0)
    return summary


def pseudo_label_slices(slices: np.ndarray, cams: np.ndarray, labels: Sequence[int]) -> tuple[np.ndarray,
                                                                                               np.ndarray]:
    """UM-CAM fusion of every slice's CAMs, and GSE pseudo-labels where the user said present.

    slices (N, 1, H, W), cams (N, 3, H, W), labels N × 0/1 → fused (N, H, W) float32 in [0, 1],
    pseudo-labels (N, H, W) uint8 (all 0 in slices labelled 0: the user said there is no brain)."""
    fused = np.asarray(fuse_cams(cams), dtype=np.float32)
    pseudo = np.zeros(fused.shape, np.uint8)
    present = np.flatnonzero(np.asarray(labels))
    pseudo[present] = expand_seeds_batch(slices[present, 0], fused[present])
    return fused, pseudo


def stored_slice_order(grid: SliceGrid) -> np.ndarray | None:
    """``order[i]`` = the stored slice (array axis 0 of the input) that model slice ``i`` lies in, or
    None when the stored slice axis is not the axial one (a sagittal or coronal acquisition).

    The model slices the head axially, inferior to superior (`grid.ORIENTATION`); reorientation
    only permutes and flips axes, so the model's slice axis is ± one of the input's voxel axes."""
    stored = np.asarray(grid.input.direction).reshape(3, 3)
    model = np.asarray(grid.model.direction).reshape(3, 3)
    along = stored.T @ model[:, 2]  # the model's slice axis in the input's (x, y, z) voxel axes
    if int(np.argmax(np.abs(along))) != 2:
        return None
    order = np.arange(grid.n_slices)
    return order if along[2] > 0 else order[::-1]


def _agreement(presence: np.ndarray, labels: Sequence[int]) -> dict[str, Any]:
    """The classifier against the user's labels at probability 0.5: a quick check that the model
    sees the structure where the user does (a large disagreement makes the pseudo-labels suspect)."""
    said, seen = np.asarray(labels, bool), presence >= 0.5
    return {"threshold": 0.5, "accuracy": round(float(np.mean(said == seen)), 4),
            "present_and_seen": int(np.sum(said & seen)), "present_not_seen": int(np.sum(said & ~seen)),
            "absent_but_seen": int(np.sum(~said & seen)), "absent_not_seen": int(np.sum(~said & ~seen))}


def run_pseudo_labels(
    input_path: Path, out_dir: Path, slice_labels: Sequence[int], model: Mapping[str, str], predict: CamPredict,
    progress: Progress = no_progress, *, modality: str = "MR", batch_size: int = BATCH_SLICES,
    series_uid: str | None = None, allow_modality_mismatch: bool = False,
) -> dict[str, Any]:
    """UM-CAM map and GSE pseudo-labels of one volume from its slice-level labels (one 0/1 per slice
    along the stored slice axis, ``services/umcam/slice_labels.py``).

    Writes ``umcam.nii.gz`` (fused map, float32 on the input grid), ``mask.nii.gz`` (pseudo-label),
    ``preview.png``, ``seg.dcm`` for DICOM input and ``summary.json`` (per slice the user's label and
    the classifier's presence probability); returns the summary. ``model``: the served classifier.
    A label count other than the slice count fails with ``slice-labels-mismatch``."""
    watch = Stopwatch()
    progress("loading", 0.0)
    original, series = load_input(input_path, series_uid)
    input_check = check_input_modality(original, series, modality, allow_modality_mismatch)
    problem = check_slice_count(slice_labels, original.shape[0])
    if problem is not None:
        raise JobInputError(MISMATCH_KIND, problem)
    slices, grid = to_model_slices(original)
    order = stored_slice_order(grid)
    if order is None:
        raise JobInputError(AXIS_KIND, f"the volume's stored slices are not axial ({original.orientation_code()}): "
                            "slice labels must label axial slices, as the model sees them; resample the volume "
                            "to axial slices and label those")
    labels = np.asarray(slice_labels, np.uint8)[order]  # in model order
    watch.mark("load")
    outputs = _in_batches(slices, predict, batch_size, lambda f: progress("class activation maps", 0.05 + 0.6 * f))
    presence = np.empty(len(order), np.float32)  # in stored order, as the user's labels
    presence[order] = np.concatenate([np.asarray(p, np.float32).reshape(-1) for p, _ in outputs])
    cams = np.concatenate([c for _, c in outputs])
    watch.mark("inference")
    progress("geodesic seed expansion", 0.7)
    fused, pseudo = pseudo_label_slices(slices, cams, labels)
    watch.mark("pseudo_labels")
    progress("writing", 0.9)
    out_dir.mkdir(parents=True, exist_ok=True)
    umcam = original.with_array(np.asarray(from_model_slices(fused, grid), dtype=np.float32))
    tmp = out_dir / f".tmp-{UMCAM_NAME}"
    write_volume(umcam, tmp)
    tmp.replace(out_dir / UMCAM_NAME)
    mask = original.with_array(np.asarray(from_model_slices(pseudo, grid)).astype(np.uint8))
    artifacts = write_mask_outputs(out_dir, original, mask, BRAIN_CLASSES, model, series, preview_window=None)
    watch.mark("write")
    summary = {
        "model": dict(model),
        "input": describe_input(input_path, original, series),
        "input_check": input_check,
        "slice_axis": "stored (array axis 0: a file's third voxel axis, a DICOM series' slices in order)",
        "slices": [{"slice": k, "label": int(label), "presence": round(float(p), 4)}
                   for k, (label, p) in enumerate(zip(slice_labels, presence, strict=True))],
        "classifier_vs_labels": _agreement(presence, slice_labels),
        "structures": structure_volumes(mask, {1: "brain"}),
        "segmenter_training": "not built: the job returns UM-CAM maps and pseudo-labels; training a segmenter "
                              "on them (optional in issue #20) is not offered as a service",
        "timings_s": watch.timings,
        "artifacts": [UMCAM_NAME, *artifacts],
    }
    write_json(out_dir / SUMMARY_NAME, summary)
    progress("done", 1.0)
    return summary

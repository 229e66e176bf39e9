"""A whole-volume segmentation job as a plain function: read → prepare → sliding window → write.

The Celery task (workers/tasks.py) only wires this to the broker and the job record; tests call it
directly with an in-process predictor. Preprocessing comes from the model's manifest, so the
worker applies exactly what the model was trained with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from services.common.dicom_seg import write_segmentation
from services.common.dicom_series import DicomSeries, read_dicom_zip
from services.common.preview import write_preview
from services.common.sliding_window import Predictor, SlidingWindow
from services.common.volume import (
    Interpolator,
    Volume,
    read_volume,
    reorient,
    resample,
    resample_like,
    write_volume,
)

MASK_NAME = "mask.nii.gz"
SUMMARY_NAME = "summary.json"
PREVIEW_NAME = "preview.png"
SEG_NAME = "seg.dcm"

# (stage, fraction of the whole job) -> None
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class ModelCard:
    """What the worker needs from a model's manifest."""

    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]
    patch_size: tuple[int, int, int]
    orientation: str | None
    spacing_mm: tuple[float, float, float] | None
    window: tuple[float, float] | None  # HU clip range, mapped linearly to [-1, 1]
    pad_value: float  # what the network sees beyond the volume's border (air)
    overlap: float  # sliding-window overlap the model was validated with

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelCard:
        """Read the ``preprocessing`` block export/ writes: orientation, spacing (x, y, z mm),
        clip_hu, pad_value, patch_size, classes, sliding_window.overlap; null means "leave as is"."""
        pre = manifest["preprocessing"]
        orientation, spacing, window = pre.get("orientation"), pre.get("spacing"), pre.get("clip_hu")
        return cls(
            name=manifest["model"],
            version=str(manifest["version"]),
            sha256=manifest["sha256"],
            classes=tuple(pre["classes"]),
            patch_size=tuple(pre["patch_size"]),  # type: ignore[arg-type]
            orientation=None if orientation in (None, "any") else orientation,
            spacing_mm=tuple(spacing) if spacing else None,  # type: ignore[arg-type]
            window=tuple(window) if window else None,  # type: ignore[arg-type]
            pad_value=float(pre.get("pad_value", -1.0 if window else -1000.0)),
            overlap=float(pre.get("sliding_window", {}).get("overlap", 0.25)),
        )


def prepare(volume: Volume, card: ModelCard) -> Volume:
    """Bring a volume onto the model's grid and intensity scale (geometry carried along).

    The HU window is applied before resampling so that out-of-field values (e.g. -2048) cannot
    bleed into the interpolated border; outside the input is the window's low end (air).
    """
    if card.orientation:
        volume = reorient(volume, card.orientation)
    array = volume.array.astype(np.float32)
    if card.window:
        array = np.clip(array, *card.window)
    volume = volume.with_array(array)
    if card.spacing_mm:
        outside = card.window[0] if card.window else float(array.min())
        volume = resample(volume, card.spacing_mm, Interpolator.LINEAR, default_value=outside)
    if card.window:
        low, high = card.window
        volume = volume.with_array(((volume.array - low) / (high - low) * 2.0 - 1.0).astype(np.float32))
    return volume


def load_input(path: Path, series_uid: str | None = None) -> tuple[Volume, DicomSeries | None]:
    """A NIfTI/NRRD/MHA file, or a zip holding a DICOM series (then the series is kept for SEG)."""
    if path.suffix == ".zip":
        series = read_dicom_zip(path, series_uid)
        return series.volume, series
    return read_volume(path), None


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """Argmax over the class axis as uint8, slab by slab (a whole-volume int64 argmax of an
    800-slice CT would need 1.7 GB more)."""
    labels = np.empty(logits.shape[1:], dtype=np.uint8)
    for z in range(0, logits.shape[1], 16):
        labels[z : z + 16] = np.argmax(logits[:, z : z + 16], axis=0)
    return labels


def _format_of(path: Path) -> str:
    return "nifti" if ".nii" in path.name else path.suffix.lstrip(".")


def keep_largest_components(labels: np.ndarray) -> np.ndarray:
    """Per class, keep only the largest 26-connected component (drops stray islands)."""
    out = np.zeros_like(labels)
    structure = np.ones((3, 3, 3), bool)
    for value in np.unique(labels):
        if value == 0:
            continue
        components, count = ndimage.label(labels == value, structure=structure)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            out[components == 1 + int(np.argmax(sizes))] = value
    return out


def summarise(mask: Volume, card: ModelCard) -> list[dict[str, Any]]:
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    counts = np.bincount(mask.array.ravel(), minlength=len(card.classes))
    return [
        {"label": i, "name": name, "voxels": int(counts[i]), "volume_ml": round(float(counts[i]) * voxel_ml, 3)}
        for i, name in enumerate(card.classes)
        if i > 0 or name not in ("background",)
    ]


def run_segmentation(
    input_path: Path, out_dir: Path, card: ModelCard, predict: Predictor,
    progress: ProgressFn = lambda stage, fraction: None, overlap: float | None = None, batch_size: int = 2,
    largest_component: bool = False, series_uid: str | None = None,
) -> dict[str, Any]:
    """Segment one volume; writes ``mask.nii.gz`` (input geometry), ``summary.json``, ``preview.png``
    and, for DICOM input, ``seg.dcm`` referencing the source series."""
    timings: dict[str, float] = {}

    def timed(stage: str, start: float) -> float:
        now = time.perf_counter()
        timings[stage] = round(now - start, 3)
        return now

    t = time.perf_counter()
    progress("loading", 0.0)
    original, series = load_input(input_path, series_uid)
    t = timed("load", t)
    progress("preprocessing", 0.05)
    model_grid = prepare(original, card)
    t = timed("preprocess", t)

    inferer = SlidingWindow(roi_size=card.patch_size, overlap=card.overlap if overlap is None else overlap,
                            batch_size=batch_size, pad_value=card.pad_value)
    logits = inferer(model_grid.array, predict, progress=lambda f: progress("inference", 0.1 + 0.8 * f))
    t = timed("inference", t)

    progress("postprocessing", 0.9)
    labels = argmax_classes(logits)
    del logits
    if largest_component:
        labels = keep_largest_components(labels)
    mask = resample_like(model_grid.with_array(labels), original, Interpolator.NEAREST)
    out_dir.mkdir(parents=True, exist_ok=True)
    # write-then-rename: a rerun after a crash never leaves a half-written mask behind
    tmp = out_dir / f".tmp-{MASK_NAME}"
    write_volume(mask, tmp)
    tmp.replace(out_dir / MASK_NAME)
    write_preview(original, mask, dict(enumerate(card.classes)), out_dir / PREVIEW_NAME)
    model = {"name": card.name, "version": card.version, "sha256": card.sha256}
    artifacts = [MASK_NAME, SUMMARY_NAME, PREVIEW_NAME]
    if series is not None:
        write_segmentation(mask.array, series, dict(enumerate(card.classes)), model, out_dir / SEG_NAME)
        artifacts.append(SEG_NAME)
    timed("postprocess", t)

    summary = {
        "model": model,
        "input": {"format": "dicom" if series else _format_of(input_path), "shape_zyx": list(original.shape),
                  "spacing_mm": list(original.spacing), "orientation": original.orientation_code(),
                  "series_uid": series.series_uid if series else None},
        "structures": summarise(mask, card),
        "timings_s": timings,
        "artifacts": artifacts,
    }
    (out_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2))
    progress("done", 1.0)
    return summary

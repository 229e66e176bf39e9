"""A whole-volume segmentation job as a plain function: read → prepare → sliding window → write.

The Celery task (``workers/segmentation_tasks.py``) only wires this to the job runner with a Triton
predictor; tests and benchmarks call it directly with an in-process one. Preprocessing is
`preprocessing.to_model_grid` with the spec of the served model's manifest, so the worker applies
exactly what the model was trained and evaluated with.

    card = ModelCard.from_manifest(manifest)
    summary = run_segmentation(Path("ct.nii.gz"), Path("out"), card, predict)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from services.common.input_checks import DEFAULT_MODALITY, model_modality
from services.common.job_io import (
    SUMMARY_NAME,
    Progress,
    check_input_modality,
    describe_input,
    load_input,
    no_progress,
    structure_volumes,
    write_json,
    write_mask_outputs,
)
from services.common.sliding_window import Predictor, SlidingWindow
from services.segmentation.preprocessing import PreprocessingSpec, from_model_grid, to_model_grid

__all__ = ["ModelCard", "argmax_classes", "keep_largest_components", "run_segmentation"]


@dataclass(frozen=True)
class ModelCard:
    """What the job needs from a served model's manifest."""

    name: str
    version: str
    sha256: str
    classes: tuple[str, ...]
    patch_size: tuple[int, int, int]
    spec: PreprocessingSpec  # orientation, spacing, HU window, pad value: `to_model_grid`'s input
    overlap: float  # sliding-window overlap the model was validated with
    modality: str = DEFAULT_MODALITY  # what the model was made for (manifest ``modality``, else CT)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> ModelCard:
        """Read the ``preprocessing`` block export/ writes: the spec's fields, patch_size, classes,
        sliding_window.overlap; null means "leave as is"."""
        pre = manifest["preprocessing"]
        return cls(
            name=manifest["model"],
            version=str(manifest["version"]),
            sha256=manifest["sha256"],
            classes=tuple(pre["classes"]),
            patch_size=tuple(pre["patch_size"]),  # type: ignore[arg-type]
            spec=PreprocessingSpec.from_manifest(pre),
            overlap=float(pre.get("sliding_window", {}).get("overlap", 0.25)),
            modality=model_modality(manifest),
        )

    @property
    def facts(self) -> dict[str, str]:
        """Model name, version and sha256, as results quote them."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def argmax_classes(logits: np.ndarray) -> np.ndarray:
    """Argmax over the class axis as uint8, slab by slab (a whole-volume int64 argmax of an
    800-slice CT would need 1.7 GB more)."""
    labels = np.empty(logits.shape[1:], dtype=np.uint8)
    for z in range(0, logits.shape[1], 16):
        labels[z : z + 16] = np.argmax(logits[:, z : z + 16], axis=0)
    return labels


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


def run_segmentation(
    input_path: Path, out_dir: Path, card: ModelCard, predict: Predictor, progress: Progress = no_progress,
    overlap: float | None = None, batch_size: int = 2, largest_component: bool = False,
    series_uid: str | None = None, allow_modality_mismatch: bool = False,
) -> dict[str, Any]:
    """Segment one volume; writes ``mask.nii.gz`` (input geometry), ``summary.json``, ``preview.png``
    and, for DICOM input, ``seg.dcm`` referencing the source series; returns the summary.

    An input that is not the model's modality (a DICOM series of another Modality, or a file without
    air in HU for a CT model) fails with ``modality-mismatch`` / ``not-ct`` unless
    ``allow_modality_mismatch`` (recorded in the summary's ``input_check``)."""
    timings: dict[str, float] = {}

    def timed(stage: str, start: float) -> float:
        now = time.perf_counter()
        timings[stage] = round(now - start, 3)
        return now

    t = time.perf_counter()
    progress("loading", 0.0)
    original, series = load_input(input_path, series_uid)
    input_check = check_input_modality(original, series, card.modality, allow_modality_mismatch)
    t = timed("load", t)
    progress("preprocessing", 0.05)
    model_grid = to_model_grid(original, card.spec)
    t = timed("preprocess", t)

    inferer = SlidingWindow(roi_size=card.patch_size, overlap=card.overlap if overlap is None else overlap,
                            batch_size=batch_size, pad_value=card.spec.pad_value)
    # labels streamed slab by slab: the blended logits of a whole 512×512×800 CT (4.2 GB for 5
    # classes) are never held, only the z-slab the current windows cover (SlidingWindow.argmax)
    labels = inferer.argmax(model_grid.array, predict, progress=lambda f: progress("inference", 0.1 + 0.8 * f))
    # from here on only the grid's geometry is needed: drop its float32 image (0.8 GB at 512×512×800),
    # so resampling back and writing the outputs never hold it (bench.worker_memory)
    model_grid = model_grid.with_array(labels)
    t = timed("inference", t)

    progress("postprocessing", 0.9)
    if largest_component:
        model_grid = model_grid.with_array(keep_largest_components(labels))
    del labels
    mask = from_model_grid(model_grid, original)
    classes = dict(enumerate(card.classes))
    artifacts = write_mask_outputs(out_dir, original, mask, classes, card.facts, series)
    timed("postprocess", t)

    reported = {i: name for i, name in classes.items() if i > 0 or name != "background"}
    summary = {
        "model": card.facts,
        "input": describe_input(input_path, original, series),
        "input_check": input_check,
        "structures": structure_volumes(mask, reported),
        "timings_s": timings,
        "artifacts": artifacts,
    }
    write_json(out_dir / SUMMARY_NAME, summary)
    progress("done", 1.0)
    return summary

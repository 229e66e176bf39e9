"""What every volume job shares: reading the upload, writing a mask and its companions, typed input errors.

A job function (``services/<family>/job.py``) reads its input with `load_input`, does its family's
work, and writes its outputs with the writers here, so that all families produce the same files the
same way: the mask on the input's own grid by write-then-rename (a rerun after a crash replaces, never
leaves half a file), a preview, a DICOM SEG for DICOM input, volumes in mL, a JSON summary. The worker
(``workers/job_runner.py``) turns `JobInputError` and `VolumeError` into a failed job with a typed
error; everything here is plain Python, testable without a broker.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from services.common.dicom_seg import write_segmentation
from services.common.dicom_series import DicomSeries, read_dicom_zip
from services.common.input_checks import (
    CORRUPT_KIND,
    DEFAULT_MODALITY,
    CorruptInputError,
    ModalityError,
    check_modality,
)
from services.common.preview import WINDOW_HU, write_preview
from services.common.volume import Volume, read_volume, write_volume

MASK_NAME = "mask.nii.gz"
SUMMARY_NAME = "summary.json"
PREVIEW_NAME = "preview.png"
SEG_NAME = "seg.dcm"
RESULT_NAME = "result.json"

# (stage, fraction of the whole job) -> None; the worker's raises when the job was cancelled
Progress = Callable[[str, float], None]


class Stopwatch:
    """Seconds per stage of a job, for its summary's ``timings_s``: ``mark(stage)`` closes the stage."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(now - self._last, 3)
        self._last = now


def no_progress(stage: str, fraction: float) -> None:
    """The progress callback of a job run outside the worker."""


class JobInputError(Exception):
    """The request cannot be done as asked (e.g. a template lacks a structure); ``kind`` types it
    (the job's ``error.type``), the message says what to change."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def load_input(path: Path, series_uid: str | None = None) -> tuple[Volume, DicomSeries | None]:
    """A NIfTI/NRRD/MHA file, or a zip holding a DICOM series (then the series is kept for SEG).

    Compressed data is inflated with its integrity checks before an image library reads it
    (`services.common.input_checks`); damaged data is a `JobInputError` of kind ``corrupt-archive``.
    """
    try:
        if path.suffix == ".zip":
            series = read_dicom_zip(path, series_uid)
            return series.volume, series
        return read_volume(path), None
    except CorruptInputError as error:
        raise JobInputError(error.kind, str(error)) from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:  # a zip member's CRC, bad deflate data
        raise JobInputError(CORRUPT_KIND, f"{path.name}: a member of the zip cannot be read ({error}); the "
                            "compressed data is damaged: zip the series again and check that the transfer "
                            "finished") from None


def check_input_modality(volume: Volume, series: DicomSeries | None, expected: str = DEFAULT_MODALITY,
                         allow_mismatch: bool = False) -> dict[str, Any]:
    """The shared modality check of every volume job (`services.common.input_checks.check_modality`):
    the ``input_check`` block for the result, or a `JobInputError` ``modality-mismatch`` / ``not-ct``."""
    try:
        return check_modality(volume.array, series.modality if series else None, expected, allow_mismatch)
    except ModalityError as error:
        raise JobInputError(error.kind, str(error)) from None


def describe_input(path: Path, volume: Volume, series: DicomSeries | None) -> dict[str, Any]:
    """The input as a summary reports it: format, shape, spacing, orientation, DICOM series."""
    file_format = "dicom" if series else "nifti" if ".nii" in path.name else path.suffix.lstrip(".")
    return {"format": file_format, "shape_zyx": list(volume.shape), "spacing_mm": list(volume.spacing),
            "orientation": volume.orientation_code(), "series_uid": series.series_uid if series else None}


def write_json(path: Path, document: Any) -> Path:
    """Write-then-rename, so a reader never sees half a file."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)
    return path


def structure_volumes(mask: Volume, classes: Mapping[int, str]) -> list[dict[str, Any]]:
    """Voxel count and volume (mL) of every label in ``classes``."""
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    counts = np.bincount(mask.array.ravel(), minlength=max(classes, default=0) + 1)
    return [{"label": label, "name": name, "voxels": int(counts[label]),
             "volume_ml": round(float(counts[label]) * voxel_ml, 3)} for label, name in classes.items()]


def write_mask_outputs(out_dir: Path, original: Volume, mask: Volume, classes: Mapping[int, str],
                       model: Mapping[str, str], series: DicomSeries | None, dicom_seg: bool = True,
                       preview_window: tuple[float, float] | None = WINDOW_HU) -> list[str]:
    """``mask.nii.gz`` (write-then-rename), ``preview.png`` and, for DICOM input with anything
    labelled, ``seg.dcm`` referencing the source series; returns the artifact names, the summary's
    included (write it with `write_json` last). ``preview_window``: `write_preview`'s ``window``
    (HU for CT; None for MR)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{MASK_NAME}"
    write_volume(mask, tmp)
    tmp.replace(out_dir / MASK_NAME)
    write_preview(original, mask, dict(classes), out_dir / PREVIEW_NAME, window=preview_window)
    artifacts = [MASK_NAME, SUMMARY_NAME, PREVIEW_NAME]
    if dicom_seg and series is not None and mask.array.any():
        write_segmentation(mask.array, series, dict(classes), dict(model), out_dir / SEG_NAME)
        artifacts.append(SEG_NAME)
    return artifacts

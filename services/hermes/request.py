"""What a Hermes segmentation request may ask for, checked the same way by the gateway and the worker.

Light on purpose (no torch): the gateway imports it to answer 422 before a job is queued, the job
(services/hermes/job.py) checks again, since a DICOM series' modality may only be known there.

    tasks = check_tasks("liver,spleen", "CT")       # (Task liver, Task spleen)
    check_tasks("liver,brain", "CT")                # RequestError kind "task-modality-mismatch"
    resolve_modality(None, "MR")                    # Modality.MR, from a DICOM series' Modality

Every refusal is a `RequestError` with a stable ``kind`` (the problem type / the job's error type), a
message saying what to change, and ``extra`` members for the problem body (the valid task names).
"""

from __future__ import annotations

import difflib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.hermes.tasks import (
    MODALITIES,
    TASK_NAMES,
    Modality,
    Task,
    TaskModalityError,
    parse_modality,
    parse_tasks,
    tasks_of_modality,
)

__all__ = ["EMPTY_KIND", "MISMATCH_KIND", "MODALITY_REQUIRED_KIND", "UNKNOWN_KIND", "UNKNOWN_MODALITY_KIND",
           "RequestError", "check_tasks", "resolve_modality", "split_tasks", "zip_modality"]

UNKNOWN_KIND = "unknown-task"
EMPTY_KIND = "empty-task-list"
MISMATCH_KIND = "task-modality-mismatch"
MODALITY_REQUIRED_KIND = "modality-required"
UNKNOWN_MODALITY_KIND = "unknown-modality"
REPEATED_KIND = "repeated-task"


class RequestError(ValueError):
    """A request Hermes cannot serve as asked; ``kind`` types it, ``extra`` adds problem members."""

    def __init__(self, kind: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.kind, self.extra = kind, extra


def split_tasks(request: str | Sequence[str]) -> list[str]:
    """``"liver, spleen"`` or ``["liver", "spleen"]`` → names, blanks dropped."""
    names = request.split(",") if isinstance(request, str) else list(request)
    return [str(n).strip() for n in names if str(n).strip()]


def check_tasks(request: str | Sequence[str], modality: str | Modality | None) -> tuple[Task, ...]:
    """The requested tasks in request order; `RequestError` for an empty list, unknown or repeated
    names, and (when ``modality`` is known) a task of the other modality."""
    names = split_tasks(request)
    valid = list(TASK_NAMES)
    if not names:
        raise RequestError(EMPTY_KIND, "the task list is empty: name one or more tasks, comma-separated, e.g. "
                           f"tasks=liver,spleen; valid tasks: {', '.join(valid)}", valid_tasks=valid)
    unknown = [n for n in names if n.lower() not in TASK_NAMES]
    if unknown:
        close = sorted({m for n in unknown for m in difflib.get_close_matches(n.lower(), valid, n=2)})
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise RequestError(UNKNOWN_KIND, f"unknown task(s) {', '.join(map(repr, unknown))}{hint}; valid tasks: "
                           f"{', '.join(valid)}", valid_tasks=valid, unknown=unknown)
    try:
        return parse_tasks(names, modality=modality)
    except TaskModalityError as error:
        mod = parse_modality(modality) if modality is not None else None
        allowed = [t.name for t in tasks_of_modality(mod)] if mod is not None else valid
        raise RequestError(MISMATCH_KIND, str(error), modality=str(mod), valid_tasks=allowed) from None
    except ValueError as error:  # what remains after the checks above: a repeated name
        raise RequestError(REPEATED_KIND, str(error), valid_tasks=valid) from None


def parse_modality_field(value: str | None) -> Modality | None:
    """The ``modality`` form field: CT, MR (MRI), any case; None when absent."""
    if value is None or not value.strip():
        return None
    try:
        return parse_modality(value)
    except ValueError as error:
        raise RequestError(UNKNOWN_MODALITY_KIND, str(error), valid_modalities=[str(m) for m in MODALITIES]) from None


def resolve_modality(requested: str | Modality | None, dicom_modality: str | None,
                     what: str = "the upload") -> Modality:
    """The modality a request runs with: the one asked for, else a DICOM series' Modality (CT or MR);
    `RequestError` ``modality-required`` when neither says."""
    asked = parse_modality_field(str(requested)) if requested is not None else None
    if asked is not None:
        return asked
    if dicom_modality is not None:
        try:
            return parse_modality(dicom_modality)
        except ValueError:
            raise RequestError(MODALITY_REQUIRED_KIND, f"the DICOM series' Modality is {dicom_modality!r}, which "
                               "Hermes does not segment; it takes CT or MR",
                               valid_modalities=[str(m) for m in MODALITIES]) from None
    raise RequestError(MODALITY_REQUIRED_KIND, f"{what} carries no modality (only a DICOM series has a "
                       "Modality tag): send modality=CT or modality=MR",
                       valid_modalities=[str(m) for m in MODALITIES])


def zip_modality(path: Path, series_uid: str | None = None, max_members: int = 64) -> str | None:
    """The Modality of the DICOM images in a zip, read from headers only (no pixel data); None when
    no member says or the members disagree (then the worker decides from the series it reads).
    Reads at most ``max_members`` members: enough for one series' first slices."""
    import pydicom

    found: set[str] = set()
    try:
        with zipfile.ZipFile(path) as archive:
            for info in [i for i in archive.infolist() if not i.is_dir()][:max_members]:
                with archive.open(info) as member:
                    data = member.read(min(info.file_size, 1 << 20))
                try:
                    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                         specific_tags=["Modality", "SeriesInstanceUID"])
                except Exception:  # noqa: BLE001 - not a DICOM file (README, thumbnails): the worker's to judge
                    continue
                modality = str(getattr(ds, "Modality", "") or "")
                if not modality or (series_uid is not None and str(getattr(ds, "SeriesInstanceUID", "")) != series_uid):
                    continue
                found.add(modality.upper())
    except Exception:  # noqa: BLE001 - a peek at the headers only: whatever fails here, the worker judges the zip
        return None
    return found.pop() if len(found) == 1 else None

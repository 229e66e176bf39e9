"""Slice-level labels of a pseudo-label job: what a user sends, and the checks that say what to fix.

A user who wants UM-CAM pseudo-labels for a volume says, per slice, whether the structure (the
brain) is in it: a JSON list of 0/1, one entry per slice along the volume's **stored slice axis** —
the third voxel axis of a NIfTI/NRRD/MetaImage file (``k``; axis 0 of the (z, y, x) array SimpleITK
returns), or a DICOM series' slices in order along their normal (as ``services/common/dicom_series``
sorts them) — first entry = first slice. ``[0, 0, 1, 1, 1, 0]``: brain in slices 2–4.

Plain Python and SimpleITK only (no torch): the gateway uses it at submission, the worker again in
the job, so a form the gateway cannot fully judge (a DICOM zip) still fails with the same message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

__all__ = ["MISMATCH_KIND", "check_slice_count", "header_slice_count", "parse_slice_labels"]

MISMATCH_KIND = "slice-labels-mismatch"
EXAMPLE = "[0, 0, 1, 1, 1, 0]"


def parse_slice_labels(text: str) -> list[int]:
    """The 0/1 list from the form field; `ValueError` saying what to fix otherwise."""
    try:
        labels = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"slice_labels must be a JSON list of 0/1, one per slice, e.g. {EXAMPLE}") from None
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"slice_labels must be a non-empty JSON list of 0/1, one per slice, e.g. {EXAMPLE}")
    bad = [i for i, v in enumerate(labels) if isinstance(v, bool) or v not in (0, 1)]
    if bad:
        raise ValueError(f"slice_labels may hold only 0 (structure absent) and 1 (present); entries {bad[:10]} "
                         "are neither")
    if not any(labels):
        raise ValueError("no slice is labelled 1 (present): UM-CAM places seeds only in slices labelled present, "
                         "so label at least one slice that shows the structure")
    return [int(v) for v in labels]


def check_slice_count(labels: Sequence[int], slice_count: int) -> str | None:
    """None when there is one label per slice, else the message saying what to fix."""
    if len(labels) == slice_count:
        return None
    return (f"slice_labels has {len(labels)} entries but the volume has {slice_count} slices along its stored "
            "slice axis (the third voxel axis of the file; a DICOM series' slices in order): send one 0/1 per slice")


def header_slice_count(path: Path) -> int | None:
    """The slice count a NIfTI/NRRD/MetaImage header declares (the third axis), read without the
    voxels; None for a file that is not a 3-D image (the job then says what is wrong with it)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = reader.GetSize()
    return int(size[2]) if len(size) == 3 else None

"""The real chest CR (pydicom-data) as DICOM bytes, with header tags changed for a test case."""

from __future__ import annotations

import io


def real_cr_bytes(**tags: str) -> bytes:
    """e.g. ``real_cr_bytes(BodyPartExamined="EXTREMITY")``: the same pixels under another header."""
    import pydicom

    from services.report.cr import chest_cr_path

    ds = pydicom.dcmread(chest_cr_path())
    for key, value in tags.items():
        setattr(ds, key, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()

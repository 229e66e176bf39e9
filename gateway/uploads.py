"""Uploads: streamed to the artifact store with a size cap, format sniffed from the bytes."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

from fastapi import UploadFile

from gateway.problems import Problem

CHUNK = 1 << 20


def sniff_volume_suffix(head: bytes) -> str:
    """File suffix for a 3D volume upload, judged from its first bytes, never from its name."""
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 400)
        except zlib.error:
            inner = b""
        if len(inner) >= 348 and inner[344:348] in (b"n+1\x00", b"ni1\x00"):
            return ".nii.gz"
        raise Problem(415, "Unsupported upload", "gzip data that is not a NIfTI-1 image (.nii.gz); "
                      "send NIfTI (.nii/.nii.gz), NRRD or MetaImage (.mha)", kind="unsupported-format")
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        return ".nii"
    if head.startswith(b"NRRD"):
        return ".nrrd"
    if head.startswith(b"ObjectType"):
        return ".mha"
    if head[:4] == b"PK\x03\x04" or head[128:132] == b"DICM":
        raise Problem(415, "Unsupported upload", "DICOM uploads are not accepted yet; convert the series to "
                      "NIfTI (e.g. dcm2niix) and upload the .nii.gz", kind="unsupported-format")
    raise Problem(415, "Unsupported upload", "not a NIfTI, NRRD or MetaImage volume (judged from its content); "
                  "send a 3D CT as .nii.gz, .nrrd or .mha", kind="unsupported-format")


async def save_upload(upload: UploadFile, directory: Path, stem: str, max_bytes: int) -> tuple[str, str, int]:
    """Stream ``upload`` to ``directory/stem+suffix``; returns (file name, sha256, size)."""
    head = await upload.read(CHUNK)
    if not head:
        raise Problem(422, "Empty upload", "the uploaded file is empty", kind="empty-upload")
    name = stem + sniff_volume_suffix(head)
    digest, size = hashlib.sha256(), 0
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    try:
        with open(target, "wb") as out:
            chunk = head
            while chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise Problem(413, "Upload too large",
                                  f"upload exceeds the limit of {max_bytes // (1 << 20)} MiB "
                                  "(MEDSTACK_MAX_UPLOAD_MB)")
                digest.update(chunk)
                out.write(chunk)
                chunk = await upload.read(CHUNK)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return name, digest.hexdigest(), size




"""Uploads: multipart or raw body, streamed to the artifact store with a size cap, format sniffed.

The body is counted as it arrives, so an oversized upload is refused with 413 as soon as it
passes the limit (at once when ``Content-Length`` already says so), never after it was buffered.
Multipart is parsed by Starlette's parser over that counted stream (file parts spool to disk past
1 MiB); a raw body goes straight to the destination file. The format is judged from the bytes,
never from a file name or a Content-Type.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from core.settings import settings
from gateway.archives import ArchiveLimits, inspect_zip
from gateway.problems import Problem
from services.common.input_checks import CorruptInputError, InflateLimitError, verify_compressed

CHUNK = 1 << 20
HEAD = 64 << 10
RAW_MEDIA_TYPES = frozenset({
    "application/octet-stream", "application/gzip", "application/x-gzip", "application/zip",
    "application/x-zip-compressed", "application/dicom+zip",
})
VOLUME_FORMATS = "NIfTI (.nii/.nii.gz), NRRD, MetaImage (.mha) or a zip of a DICOM series"


def too_large(max_bytes: int, what: str = "upload", setting: str = "MEDSTACK_MAX_UPLOAD_MB") -> Problem:
    return Problem(413, "Upload too large", f"{what} exceeds the limit of {max_bytes / (1 << 20):g} MiB ({setting})",
                   kind="payload-too-large")


def unsupported(detail: str) -> Problem:
    return Problem(415, "Unsupported upload", detail, kind="unsupported-format")


def check_content_length(request: Request, max_bytes: int, setting: str = "MEDSTACK_MAX_UPLOAD_MB") -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + (64 << 10):
        raise too_large(max_bytes, setting=setting)


async def limited(stream: AsyncIterator[bytes], max_bytes: int,
                  setting: str = "MEDSTACK_MAX_UPLOAD_MB") -> AsyncIterator[bytes]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > max_bytes:
            raise too_large(max_bytes, setting=setting)
        yield chunk


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_multipart(request: Request, max_bytes: int, max_fields: int = 16) -> FormData:
    """Parse a multipart body (one file part at most) over a stream capped at ``max_bytes``."""
    # the file part may be up to max_bytes; the multipart framing adds a little
    parser = MultiPartParser(request.headers, limited(request.stream(), max_bytes + (64 << 10)),
                             max_files=1, max_fields=max_fields, max_part_size=256 << 10)
    try:
        return await parser.parse()
    except MultiPartException as error:
        raise Problem(400, "Malformed multipart body", error.message, kind="malformed-multipart") from error


# ---- format sniffing ------------------------------------------------------------------------------


def sniff_volume_suffix(head: bytes) -> str:
    """File suffix for a 3D volume upload, judged from its first bytes, never from its name."""
    if head[:2] == b"\x1f\x8b":
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 400)
        except zlib.error:
            inner = b""
        if len(inner) >= 348 and inner[344:348] in (b"n+1\x00", b"ni1\x00"):
            return ".nii.gz"
        raise unsupported(f"gzip data that is not a NIfTI-1 image (.nii.gz); send {VOLUME_FORMATS}")
    if len(head) >= 348 and head[344:348] == b"n+1\x00":
        return ".nii"
    if head.startswith(b"NRRD"):
        return ".nrrd"
    if head.startswith(b"ObjectType"):
        return ".mha"
    if head[:4] == b"PK\x03\x04":
        return ".zip"
    if head[:4] in (b"PK\x05\x06", b"PK\x07\x08"):
        raise unsupported("an empty or split zip; send one zip holding the DICOM series")
    if head[128:132] == b"DICM":
        raise unsupported("a single DICOM file; send the whole series as one zip")
    raise unsupported(f"not a volume this service reads (judged from its content); send {VOLUME_FORMATS}")


# ---- saving -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedInput:
    name: str
    sha256: str
    size: int


async def chunks_of(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


async def save_stream(chunks: AsyncIterator[bytes], directory: Path, stem: str, max_bytes: int,
                      sniff: Any = sniff_volume_suffix) -> SavedInput:
    """Write ``chunks`` to ``directory/stem+suffix`` (suffix from ``sniff(first bytes)``)."""
    head = b""
    iterator = chunks.__aiter__()
    async for chunk in iterator:
        head += chunk
        if len(head) >= HEAD:
            break
    if not head:
        raise Problem(422, "Empty upload", "the uploaded file is empty", kind="empty-upload")
    name = stem + sniff(head)
    digest, size = hashlib.sha256(), 0
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    try:
        with open(target, "wb") as out:
            chunk = head
            while True:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(max_bytes)
                digest.update(chunk)
                await run_in_threadpool(out.write, chunk)
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return SavedInput(name, digest.hexdigest(), size)


async def save_volume(source: UploadFile | AsyncIterator[bytes], directory: Path, stem: str = "input",
                      max_bytes: int | None = None) -> SavedInput:
    """A 3D volume or DICOM-series zip; a zip is checked member by member before it is accepted.

    Compressed data is inflated with its integrity checks (a gzip member's CRC-32 and length, a zip
    member's CRC-32): damaged data is 422 ``corrupt-archive``. The zip's *medical* content (which
    series, CT or MR, gaps) is the worker's to judge: it answers with a typed job error. The gateway
    refuses what is unsafe to open.
    """
    max_bytes = max_bytes or max_upload_bytes()
    chunks = chunks_of(source) if isinstance(source, UploadFile) else source
    saved = await save_stream(chunks, directory, stem, max_bytes)
    check = inspect_zip if saved.name.endswith(".zip") else verify_compressed_upload
    try:
        await run_in_threadpool(check, directory / saved.name, archive_limits())
    except BaseException:
        (directory / saved.name).unlink(missing_ok=True)
        raise
    return saved


def verify_compressed_upload(path: Path, limits: ArchiveLimits) -> None:
    """Inflate a compressed volume (gzip NIfTI, gzip/bzip2 NRRD, zlib MetaImage) with its integrity
    checks, so that damaged data is refused now (422 ``corrupt-archive``) rather than segmented into
    garbage later; past the uncompressed limit it is a bomb (413). Uncompressed files pass as they are."""
    try:
        verify_compressed(path, limits.max_uncompressed)
    except CorruptInputError as error:
        raise Problem(422, "Corrupt archive", str(error).replace(path.name, "the upload"),
                      kind="corrupt-archive") from None
    except InflateLimitError:
        limit_mib = limits.max_uncompressed / (1 << 20)
        raise Problem(413, "Decompression bomb", f"the upload inflates past {limit_mib:g} MiB "
                      "(MEDSTACK_ARCHIVE_MAX_UNCOMPRESSED_MB)", kind="decompression-bomb") from None


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(settings.archive_max_members, settings.archive_max_uncompressed_mb << 20,
                         settings.archive_max_ratio)


def max_upload_bytes() -> int:
    return settings.max_upload_mb << 20

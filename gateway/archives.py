"""Zip uploads checked before any worker opens them: names, links, sizes, ratios, content.

Nothing is extracted. Every member is read once through ``zipfile`` into nothing but a byte count
and a look at its first bytes, so the checks see what the archive *really* holds, not what its
headers claim: a member that inflates past its declared size, past the total limit, or at a
bomb-like ratio stops the check; a bad CRC is a corrupt archive.

Refused: absolute names, ``..`` components, drive letters, backslash tricks, NUL bytes, symbolic
links, encrypted members, duplicate names, unknown compression; more than ``max_members``
entries; more than ``max_uncompressed`` bytes in all; a member over 1 MiB whose size is more than
``max_ratio`` times its compressed size.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from gateway.problems import Problem

CHUNK = 1 << 20
RATIO_FLOOR = 1 << 20  # small members may compress extremely well (blank headers) without harm
ALLOWED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 20_000
    max_uncompressed: int = 4 << 30
    max_ratio: float = 200.0


@dataclass
class ArchiveSummary:
    members: int = 0
    files: int = 0
    uncompressed_bytes: int = 0
    dicom_files: int = 0
    npy_files: int = 0
    suffixes: dict[str, int] = field(default_factory=dict)


def _unsafe(detail: str) -> Problem:
    return Problem(422, "Unsafe archive", detail, kind="unsafe-archive")


def _too_large(detail: str) -> Problem:
    return Problem(413, "Archive too large", detail, kind="archive-too-large")


def check_member_name(name: str) -> None:
    """Raise unless ``name`` stays inside the folder it would be extracted to."""
    if not name or "\x00" in name:
        raise _unsafe("a member has an empty name or a NUL byte in its name")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise _unsafe("a member has an absolute path")
    if any(part == ".." for part in PurePosixPath(posix).parts):
        raise _unsafe("a member's path leaves the archive folder ('..')")


def inspect_zip(path: Path, limits: ArchiveLimits = ArchiveLimits()) -> ArchiveSummary:
    """Check the zip at ``path`` and summarise its content; raises ``Problem`` (413/422) when unsafe."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise Problem(422, "Corrupt archive", "the upload starts like a zip but is not a readable zip file",
                      kind="corrupt-archive") from error
    summary = ArchiveSummary()
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_members:
            raise _too_large(f"the zip has {len(infos)} entries; at most {limits.max_members} are accepted")
        seen: set[str] = set()
        declared = 0
        for info in infos:
            check_member_name(info.filename)
            normalised = info.filename.replace("\\", "/").rstrip("/")
            if normalised in seen:
                raise _unsafe("the zip holds two members with the same name")
            seen.add(normalised)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _unsafe("the zip holds a symbolic link")
            if info.flag_bits & 0x1:
                raise _unsafe("the zip holds an encrypted member")
            if info.compress_type not in ALLOWED_COMPRESSION:
                raise _unsafe(f"a member uses an unsupported compression method ({info.compress_type})")
            declared += info.file_size
            if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(info.compress_size, 1):
                raise Problem(413, "Decompression bomb", f"a member inflates more than {limits.max_ratio:g}× "
                              "its compressed size", kind="decompression-bomb")
        if declared > limits.max_uncompressed:
            raise _too_large(f"the zip would inflate to {declared >> 20} MiB; the limit is "
                             f"{limits.max_uncompressed >> 20} MiB (MEDSTACK_ARCHIVE_MAX_UNCOMPRESSED_MB)")
        summary.members = len(infos)
        for info in infos:
            if info.is_dir():
                continue
            _read_member(archive, info, summary, limits)
    return summary


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, summary: ArchiveSummary,
                 limits: ArchiveLimits) -> None:
    size, head = 0, b""
    try:
        with archive.open(info) as member:
            while chunk := member.read(CHUNK):
                if not head:
                    head = chunk[:132]
                size += len(chunk)
                summary.uncompressed_bytes += len(chunk)
                if size > info.file_size:
                    raise _unsafe("a member inflates past the size its header declares")
                if summary.uncompressed_bytes > limits.max_uncompressed:
                    raise _too_large("the zip inflates past the uncompressed limit")
                if size > RATIO_FLOOR and size > limits.max_ratio * max(info.compress_size, 1):
                    raise Problem(413, "Decompression bomb", f"a member inflates more than {limits.max_ratio:g}× "
                                  "its compressed size", kind="decompression-bomb")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as error:
        raise Problem(422, "Corrupt archive", "a member of the zip cannot be read (bad data or checksum)",
                      kind="corrupt-archive") from error
    summary.files += 1
    suffix = PurePosixPath(info.filename.replace("\\", "/")).suffix.lower()
    summary.suffixes[suffix] = summary.suffixes.get(suffix, 0) + 1
    if len(head) >= 132 and head[128:132] == b"DICM":
        summary.dicom_files += 1
    elif head.startswith(b"\x93NUMPY"):
        summary.npy_files += 1

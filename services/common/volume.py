"""A 3D image whose physical geometry travels with its voxels.

`Volume` holds a numpy array in SimpleITK's (z, y, x) order together with spacing, origin and
direction in ITK's (x, y, z) order and LPS world coordinates. Everything that reads, writes,
reorients or resamples an image goes through this module, so a result always overlays its input.

Example::

    vol = read_volume("ct.nii.gz")              # vol.array.shape == (133, 512, 512)
    vol.orientation_code()                      # "LAS"
    iso = resample(vol, (1.5, 1.5, 1.5))        # model grid
    mask = iso.with_array(predict(iso.array))   # same geometry as iso
    back = resample_like(mask, vol)             # nearest, on the input grid again
    write_volume(back, "mask.nii.gz")

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) and MetaImage (.mha, .mhd), all through
SimpleITK. NIfTI keeps geometry as float32, so arbitrary float64 geometry comes back to ~1e-6 mm;
NRRD and MetaImage keep it as text at full precision.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from services.common.options import look_up

__all__ = [
    "SUFFIXES",
    "Interpolator",
    "Volume",
    "VolumeError",
    "read_volume",
    "reorient",
    "resample",
    "resample_like",
    "write_volume",
]

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_AXIS_PAIRS = ("LR", "PA", "IS")


class VolumeError(ValueError):
    """An image that cannot be used as a 3D volume; the message says what to fix."""


class Interpolator(StrEnum):
    """How `resample` fills new voxels: `linear` for intensities, `nearest` for label maps."""

    LINEAR = "linear"
    NEAREST = "nearest"
    BSPLINE = "bspline"

    @classmethod
    def parse(cls, value: str | Interpolator) -> Interpolator:
        return look_up(cls, value, "interpolator")

    def to_sitk(self) -> int:
        return {
            Interpolator.LINEAR: sitk.sitkLinear,
            Interpolator.NEAREST: sitk.sitkNearestNeighbor,
            Interpolator.BSPLINE: sitk.sitkBSpline,
        }[self]


@dataclass
class Volume:
    """Voxels plus geometry.

    array: (z, y, x), as `sitk.GetArrayFromImage` returns it.
    spacing, origin: (x, y, z) in mm, ITK order; origin is the centre of voxel (0, 0, 0).
    direction: 9 values, row-major 3x3 matrix whose columns are the x, y, z axes in LPS.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        _check_array(self.array)
        self.spacing = _vec3(self.spacing, "spacing")
        self.origin = _vec3(self.origin, "origin")
        self.direction = _floats(self.direction, 9, "direction")
        if min(self.spacing) <= 0:
            raise VolumeError(f"spacing must be positive, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) voxel counts."""
        z, y, x = self.array.shape
        return (z, y, x)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        """Copy a 3D scalar SimpleITK image."""
        if image.GetDimension() == 2:
            raise VolumeError(
                f"2D image of size {image.GetSize()}: a 3D volume is needed; "
                "send the whole series (or a 3D NIfTI/NRRD), not a single slice"
            )
        if image.GetDimension() != 3:
            raise VolumeError(
                f"{image.GetDimension()}D image of size {image.GetSize()}: a 3D scalar volume is needed; "
                "split time points or channels and send one 3D volume each"
            )
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise VolumeError(
                f"multi-component image ({image.GetNumberOfComponentsPerPixel()} values per voxel, "
                f"{image.GetPixelIDTypeAsString()}): a scalar volume is needed; send one channel "
                "(e.g. convert RGB to greyscale)"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
        )

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (bool becomes uint8, float16 float32)."""
        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        elif array.dtype == np.float16:
            array = array.astype(np.float32)
        image = sitk.GetImageFromArray(array, isVector=False)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray) -> Volume:
        """A volume on the same grid holding other voxels (e.g. a model's mask for this image)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeError(f"array shape {array.shape} does not match the volume's {self.array.shape}")
        return replace(self, array=array)

    def orientation_code(self) -> str:
        """Three letters naming where each of x, y, z points to, e.g. "LPS" or "RAS" (DICOM convention)."""
        return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.direction)

    def same_grid(self, other: Volume, atol: float = 1e-5) -> bool:
        """True when both volumes have the same shape, spacing, origin and direction (within atol)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=atol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=atol)
        )


def _vec3(values: Iterable[float], name: str) -> tuple[float, float, float]:
    x, y, z = _floats(values, 3, name)
    return (x, y, z)


def _floats(values: Iterable[float], n: int, name: str) -> tuple[float, ...]:
    out = tuple(float(v) for v in values)
    if len(out) != n:
        raise VolumeError(f"{name} needs {n} values, got {len(out)}: {out}")
    return out


def _check_array(array: np.ndarray) -> None:
    if array.ndim == 2:
        raise VolumeError(
            f"2D array of shape {array.shape}: a 3D volume (z, y, x) is needed; "
            "send the whole series, not a single slice"
        )
    if array.ndim != 3:
        raise VolumeError(
            f"array of shape {array.shape} has {array.ndim} dimensions: a 3D scalar volume (z, y, x) "
            "is needed; split time points or channels and send one 3D volume each"
        )
    if array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise VolumeError(_non_finite_message(bad))


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise VolumeError(f"{path.name}: unsupported file type; use one of {', '.join(SUFFIXES)}")


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file as a 3D scalar `Volume`."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    from services.common.input_checks import verify_compressed

    try:
        if suffix in (".nii", ".nii.gz"):
            _check_nifti(path)
        elif suffix in (".nrrd", ".mha"):
            verify_compressed(path)  # gzip/bzip2 NRRD data, zlib MetaImage data: CRC or Adler-32 and length
        image = sitk.ReadImage(str(path))
    except (RuntimeError, OSError, EOFError, zlib.error, struct.error) as exc:
        reason = _reason(str(exc))
        raise VolumeError(
            f"could not read {path.name}: the file is corrupt or incomplete ({reason}); "
            "copy or export it again and check that the transfer finished"
        ) from None
    return Volume.from_sitk(image)


def write_volume(volume: Volume, path: str | Path, compress: bool = True) -> Path:
    """Write `volume`; the format follows the suffix (.nii.gz is always gzip-compressed)."""
    path = Path(path)
    _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=compress)
    return path


def reorient(volume: Volume, code: str = "LPS") -> Volume:
    """Permute and flip the voxel axes so that they point as `code` says ("LPS", "RAS", ...).

    Voxels are not interpolated: the result holds the same values in another order, and the world
    position of every voxel is unchanged. Returns `volume` itself when it already points that way.
    """
    code = code.upper()
    if len(code) != 3 or sorted(_axis_of(c) for c in code) != [0, 1, 2]:
        raise ValueError(f"orientation {code!r} needs one letter from each of L/R, P/A, I/S, e.g. 'LPS'")
    if volume.orientation_code() == code:
        return volume
    return _same_dtype(Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), code)), volume)


def _axis_of(letter: str) -> int:
    for axis, pair in enumerate(_AXIS_PAIRS):
        if letter in pair:
            return axis
    return -1


def resample(
    volume: Volume,
    spacing: tuple[float, float, float],
    interpolator: str | Interpolator = Interpolator.LINEAR,
    default_value: float = 0.0,
) -> Volume:
    """Resample onto a grid of `spacing` (x, y, z mm) with the same origin and direction.

    The new size covers the same physical extent: round(size * old_spacing / new_spacing) per axis.
    Use `nearest` for label maps. The pixel type is kept.
    """
    new_spacing = _vec3(spacing, "spacing")
    if min(new_spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {new_spacing}")
    sizes = zip(volume.shape[::-1], volume.spacing, new_spacing, strict=True)
    new_size = [max(1, round(n * old / new)) for n, old, new in sizes]
    return _resample_to(volume, new_size, new_spacing, volume.origin, volume.direction, interpolator, default_value)


def resample_like(
    volume: Volume,
    reference: Volume,
    interpolator: str | Interpolator = Interpolator.NEAREST,
    default_value: float = 0.0,
) -> Volume:
    """Resample `volume` onto `reference`'s grid (shape, spacing, origin, direction), e.g. a mask
    computed on a model grid back onto the input image. Only the reference's geometry is used."""
    return _resample_to(
        volume,
        list(reference.shape[::-1]),
        reference.spacing,
        reference.origin,
        reference.direction,
        interpolator,
        default_value,
    )


def _resample_to(
    volume: Volume,
    size_xyz: list[int],
    spacing: tuple[float, ...],
    origin: tuple[float, ...],
    direction: tuple[float, ...],
    interpolator: str | Interpolator,
    default_value: float,
) -> Volume:
    image = volume.to_sitk()
    out = sitk.Resample(
        image,
        [int(n) for n in size_xyz],
        sitk.Transform(),
        Interpolator.parse(interpolator).to_sitk(),
        origin,
        spacing,
        direction,
        float(default_value),
        image.GetPixelID(),
    )
    return _same_dtype(Volume.from_sitk(out), volume)


def _same_dtype(result: Volume, source: Volume) -> Volume:
    """Undo `to_sitk`'s widening of bool and float16."""
    if result.array.dtype != source.array.dtype:
        result.array = result.array.astype(source.array.dtype)
    return result


def _check_nifti(path: Path) -> None:
    """ITK's NIfTI reader zero-fills a truncated file, turns NaN/inf into 0 and never checks gzip's CRC,
    so check the file itself in one pass: a ``.nii.gz`` is inflated with every integrity check
    (`services.common.input_checks.gunzip_chunks`: CRC-32, length, truncation; `CorruptInputError`);
    raise OSError when it holds fewer bytes than its header promises, VolumeError when a float image
    holds non-finite voxels."""
    from services.common.input_checks import gunzip_chunks

    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        chunks = gunzip_chunks(f.read, name=path.name) if gz else iter(lambda: f.read(1 << 24), b"")
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= 540:
                break
        expected, offset, float_dtype = _nifti_layout(head[:540])
        total, bad, pending = len(head), 0, head[offset:]
        if not gz and float_dtype is None:  # nothing to inflate or inspect: the size is enough
            total, chunks = path.stat().st_size, iter(())
        for chunk in chunks:
            total += len(chunk)
            if float_dtype is not None:
                pending += chunk
                usable = len(pending) - len(pending) % float_dtype.itemsize
                bad += _non_finite(pending[:usable], float_dtype)
                pending = pending[usable:]
        if float_dtype is not None and pending:
            usable = len(pending) - len(pending) % float_dtype.itemsize
            bad += _non_finite(pending[:usable], float_dtype)
    if total < expected:
        raise OSError(f"file ends after {total} of {expected} bytes")
    if bad:
        raise VolumeError(_non_finite_message(bad))


def _non_finite(data: bytes, dtype: np.dtype) -> int:
    values = np.frombuffer(data, dtype=dtype)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None]:
    """(expected file bytes, voxel offset, float dtype or None) from a NIfTI-1/2 header."""
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:  # NIfTI-1
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            dim = struct.unpack(endian + "8h", header[40:56])
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if sizeof_hdr == 540:  # NIfTI-2
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dim = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        raise OSError("not a NIfTI header")
    if not 1 <= dim[0] <= 7 or bitpix <= 0:
        raise OSError(f"corrupt NIfTI header (dim={dim}, bitpix={bitpix})")
    offset = max(offset, sizeof_hdr)
    voxels = int(np.prod(dim[1 : dim[0] + 1], dtype=np.int64))
    float_dtype = {16: np.dtype(endian + "f4"), 64: np.dtype(endian + "f8")}.get(datatype)
    return offset + voxels * bitpix // 8, offset, float_dtype


def _non_finite_message(count: int) -> str:
    return (
        f"{count} voxels are NaN or infinite: replace them (e.g. with the background value) before sending the volume"
    )


def _reason(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # SimpleITK's first line names its own source file; keep what follows.
    lines = [line for line in lines if not line.startswith("Exception thrown in")] or lines
    return " ".join(lines)[:300] or "unknown error"

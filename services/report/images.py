"""Chest radiograph uploads → the model's input.

Reads PNG, JPEG or a single-frame DICOM (MONOCHROME1 inverted so that more attenuation is brighter,
as MONOCHROME2 and the rendered training images show it), pads to a square, resizes to 128×128 and
applies the training normalisation (``drr.normalize``: 1st–99th percentile → [0, 1]).

    image, facts = read_image(data)          # (H, W) float32, larger = more attenuation
    x = preprocess(image)                    # (1, 1, 128, 128) float32

NumPy, Pillow and pydicom only: the gateway imports this module.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

IMAGE_SIZE = 128
MAX_PIXELS = 64_000_000  # larger images are refused before decoding (decompression bombs)
MIN_SIDE = 32


class ImageError(ValueError):
    """The upload is not a readable image. ``unsupported`` marks a readable-but-unsupported kind (415)."""

    def __init__(self, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


def kind_of(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    return "unknown"


def read_image(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """``(H, W)`` float32 where larger means more attenuation, and facts about the source."""
    kind = kind_of(data)
    try:
        if kind == "dicom":
            return _read_dicom(data)
        if kind in ("png", "jpeg"):
            return _read_pil(data, kind)
    except ImageError:
        raise
    except Exception as error:  # decoders raise many types on malformed input; all mean "unreadable"  # noqa: BLE001
        raise ImageError(f"unreadable {kind.upper()}: {type(error).__name__}: {error}"[:300]) from error
    raise ImageError("not a PNG, JPEG or DICOM file (DICOM needs the 128-byte preamble and 'DICM')",
                     unsupported=True)


def _check_size(rows: int, cols: int) -> None:
    if rows * cols > MAX_PIXELS:
        raise ImageError(f"image of {rows}×{cols} pixels is larger than {MAX_PIXELS:,} pixels")
    if min(rows, cols) < MIN_SIDE:
        raise ImageError(f"image of {rows}×{cols} pixels is smaller than {MIN_SIDE}×{MIN_SIDE}")


def _read_pil(data: bytes, kind: str) -> tuple[np.ndarray, dict[str, str]]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            _check_size(probe.height, probe.width)
            probe.verify()
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ImageError(f"corrupt or truncated {kind.upper()}: {error}") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float32)
    else:
        array = np.asarray(image.convert("L"), dtype=np.float32)
    return array, {"format": kind, "mode": image.mode, "rows": str(array.shape[0]), "columns": str(array.shape[1])}


def _read_dicom(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise ImageError(f"corrupt DICOM: {error}") from error
    if "PixelData" not in ds:
        raise ImageError("the DICOM file holds no pixel data", unsupported=True)
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(rows, cols)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise ImageError("multi-frame DICOM: send one radiograph", unsupported=True)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as error:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax))
        raise ImageError(f"cannot decode DICOM pixel data ({name}): {error}".split("\n")[0][:300],
                         unsupported=True) from error
    except (ValueError, AttributeError, EOFError) as error:
        raise ImageError(f"corrupt DICOM pixel data: {error}"[:300]) from error
    if pixels.ndim == 3 and photometric in ("RGB", "YBR_FULL", "YBR_FULL_422"):
        pixels = pixels.astype(np.float32).mean(-1)
    if pixels.ndim != 2:
        raise ImageError(f"DICOM pixel data of shape {pixels.shape}: one 2D radiograph is needed", unsupported=True)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    array = pixels.astype(np.float32) * slope + intercept
    if photometric == "MONOCHROME1":  # the minimum pixel value is white: flip within the image's own range
        array = float(array.max()) + float(array.min()) - array
    return array, {"format": "dicom", "photometric": photometric, "modality": str(ds.get("Modality", "")),
                   "rows": str(rows), "columns": str(cols), "view": str(ds.get("ViewPosition", ""))}


def normalize(image: np.ndarray) -> np.ndarray:
    """The one intensity normalisation for training and serving: 1st..99th percentile → [0, 1]."""
    image = image.astype(np.float32)
    lo, hi = np.percentile(image, [1, 99])
    return np.clip((image - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0).astype(np.float32)


def preprocess(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """(H, W) → (1, 1, size, size) float32 in [0, 1]: zero-pad to a square (centred), resize, normalise."""
    from PIL import Image

    if image.ndim != 2:
        raise ImageError(f"expected a 2D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ImageError("image holds non-finite values")
    lo = float(np.percentile(image, 0.5))
    h, w = image.shape
    side = max(h, w)
    square = np.full((side, side), lo, dtype=np.float32)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = image
    factor = side // (4 * size)
    if factor > 1:  # box-average large images first (fast, anti-aliased), then resample
        cut = side - side % factor
        square = square[:cut, :cut].reshape(cut // factor, factor, cut // factor, factor).mean((1, 3))
    small = np.asarray(Image.fromarray(square.astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return normalize(small)[None, None]

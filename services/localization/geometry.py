"""Points, boxes and crops on voxel grids; box metrics (IoU, wall distance).

Arrays are (z, y, x); points are float (z, y, x) voxel coordinates unless named ``_mm``.
A voxel box is ``(lo, hi)``: inclusive bounds, each an array (z, y, x); a world box is ``(lo, hi)`` in
mm (x, y, z), over voxel edges.
"""

from __future__ import annotations

import numpy as np

from services.common.volume import Volume

# order of the six extreme points, as voxel axis (z, y, x) and side, on an LPS grid
# (x → patient left, y → posterior, z → superior)
EXTREME_POINTS: tuple[tuple[str, int, str], ...] = (
    ("left", 2, "max"), ("right", 2, "min"),
    ("anterior", 1, "min"), ("posterior", 1, "max"),
    ("inferior", 0, "min"), ("superior", 0, "max"),
)


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """Six points (6, 3) on the mask's boundary slices, in EXTREME_POINTS order. As MedLAM does,
    each is the middle foreground voxel (raster order) of the extreme slice, not its centroid."""
    coords = np.argwhere(mask)
    if len(coords) == 0:
        raise ValueError("empty mask has no extreme points")
    points = []
    for _, axis, side in EXTREME_POINTS:
        value = coords[:, axis].max() if side == "max" else coords[:, axis].min()
        on_slice = coords[coords[:, axis] == value]  # argwhere is raster-ordered
        points.append(on_slice[len(on_slice) // 2])
    return np.asarray(points, np.float64)


def box_from_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box from six points in EXTREME_POINTS order: each wall from its own point."""
    lo, hi = np.zeros(3), np.zeros(3)
    for (_, axis, side), point in zip(EXTREME_POINTS, points, strict=True):
        (hi if side == "max" else lo)[axis] = point[axis]
    return np.minimum(lo, hi), np.maximum(lo, hi)


def box_of_mask(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coords = np.argwhere(mask)
    return coords.min(0).astype(np.float64), coords.max(0).astype(np.float64)


def box_iou(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """IoU of two continuous boxes (lo, hi), e.g. world boxes in mm."""
    inter = float(np.prod(np.clip(np.minimum(a[1], b[1]) - np.maximum(a[0], b[0]), 0, None)))
    size = lambda box: float(np.prod(box[1] - box[0]))  # noqa: E731
    return inter / (size(a) + size(b) - inter)


def wall_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Mean absolute distance between corresponding walls of two boxes (MedLAM's WD)."""
    return float(np.mean(np.abs(np.concatenate([a[0] - b[0], a[1] - b[1]]))))


def world_box(volume: Volume, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive voxel box (z, y, x) → axis-aligned world box (x, y, z mm) over the voxel edges."""
    corners = np.array([[z, y, x] for z in (lo[0] - 0.5, hi[0] + 0.5) for y in (lo[1] - 0.5, hi[1] + 0.5)
                        for x in (lo[2] - 0.5, hi[2] + 0.5)])
    world = voxel_to_mm(volume, corners)
    return world.min(0), world.max(0)


def crop(array: np.ndarray, center: np.ndarray, size: int, fill: float = 0.0) -> np.ndarray:
    """A ``size``³ cube centred on ``center`` (voxel), padded with ``fill`` outside the array."""
    start = np.round(np.asarray(center)).astype(int) - size // 2
    out = np.full((size,) * 3, fill, array.dtype)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + size, array.shape)
    if np.any(src_hi <= src_lo):
        return out
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    out[tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))] = \
        array[tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))]
    return out


def crop_start(center: np.ndarray, size: int) -> np.ndarray:
    """Voxel index of a crop's first voxel (matches ``crop``)."""
    return np.round(np.asarray(center)).astype(int) - size // 2


def voxel_to_mm(volume: Volume, zyx: np.ndarray) -> np.ndarray:
    """(n, 3) voxel (z, y, x) → (n, 3) world (x, y, z) mm, LPS as ITK."""
    zyx = np.atleast_2d(zyx).astype(np.float64)
    ijk = zyx[:, ::-1]
    direction = np.asarray(volume.direction).reshape(3, 3)
    return np.asarray(volume.origin) + (ijk * np.asarray(volume.spacing)) @ direction.T


def mm_to_voxel(volume: Volume, xyz: np.ndarray) -> np.ndarray:
    """(n, 3) world (x, y, z) mm → (n, 3) voxel (z, y, x), continuous."""
    xyz = np.atleast_2d(xyz).astype(np.float64)
    direction = np.asarray(volume.direction).reshape(3, 3)
    ijk = ((xyz - np.asarray(volume.origin)) @ direction) / np.asarray(volume.spacing)
    return ijk[:, ::-1]

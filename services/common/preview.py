"""A PNG a person can glance at: axial, coronal and sagittal slices with the mask overlaid.

Slices pass through the centre of the labelled region; pixels are resampled to square
millimetres so anatomy keeps its proportions; a legend names each structure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from services.common.volume import Volume, reorient

WINDOW_HU = (-1000.0, 1000.0)
_PALETTE = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
     [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]], dtype=np.float32)


def _grey(slab: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return (np.clip((slab.astype(np.float32) - low) / (high - low), 0, 1) * 255).astype(np.float32)


def _centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of the labelled voxels (the volume's centre when there are none), without a
    coordinate list as long as the volume."""
    shape = labels.shape
    counts = [np.count_nonzero(labels, axis=axes) for axes in ((1, 2), (0, 2), (0, 1))]
    centre = []
    for n, c in zip(shape, counts, strict=True):
        total = c.sum()
        centre.append(int(np.dot(np.arange(n), c) / total) if total else n // 2)
    return centre[0], centre[1], centre[2]


def _panel(image: np.ndarray, labels: np.ndarray, pixel_mm: tuple[float, float], alpha: float,
           window: tuple[float, float]) -> Image.Image:
    rgb = np.repeat(_grey(image, window)[..., None], 3, axis=2)
    for value in np.unique(labels):
        if value == 0:
            continue
        where = labels == value
        rgb[where] = (1 - alpha) * rgb[where] + alpha * _PALETTE[(value - 1) % len(_PALETTE)]
    panel = Image.fromarray(rgb.astype(np.uint8))
    rows_mm, cols_mm = pixel_mm
    size = (max(1, round(panel.width * cols_mm)), max(1, round(panel.height * rows_mm)))
    return panel.resize(size, Image.Resampling.NEAREST)


def write_preview(image: Volume, mask: Volume, names: dict[int, str], path: Path, alpha: float = 0.45,
                  window: tuple[float, float] | None = WINDOW_HU) -> Path:
    """Three orthogonal slices of ``image`` with ``mask`` on top, in radiological LPS display order.

    ``window``: the grey range (HU for a CT); None spreads the image's 1st–99th percentile, for
    images without a fixed scale (MR)."""
    image, mask = reorient(image, "LPS"), reorient(mask, "LPS")
    ct, lab = image.array, mask.array
    if window is None:
        low, high = np.percentile(ct[::2, ::2, ::2], (1, 99))
        window = (float(low), float(max(high, low + 1e-6)))
    sx, sy, sz = image.spacing
    z, y, x = _centre(lab)
    # flip z so the head is up in coronal and sagittal views
    panels = [
        _panel(ct[z], lab[z], (sy, sx), alpha, window),
        _panel(ct[::-1, y, :], lab[::-1, y, :], (sz, sx), alpha, window),
        _panel(ct[::-1, :, x], lab[::-1, :, x], (sz, sy), alpha, window),
    ]
    present = [int(v) for v in np.unique(lab) if v > 0]
    legend_h = 18 * len(present) + 10
    width = sum(p.width for p in panels) + 10 * (len(panels) + 1)
    height = max(max(p.height for p in panels) + 20, legend_h)
    canvas = Image.new("RGB", (width + 180, height), "black")
    left = 10
    for p in panels:
        canvas.paste(p, (left, 10))
        left += p.width + 10
    draw = ImageDraw.Draw(canvas)
    for row, value in enumerate(present):
        colour = tuple(int(c) for c in _PALETTE[(value - 1) % len(_PALETTE)])
        draw.rectangle([left, 10 + 18 * row, left + 12, 22 + 18 * row], fill=colour)
        draw.text((left + 18, 10 + 18 * row), names.get(value, str(value)), fill="white")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path

"""MedLSAM's second stage: a box-prompted 2D segmenter, CPU-sized, and the slice geometry around it.

A 3D box from MedLAM becomes one 2D box per axial slice in its z-range (the same box on every slice,
MedLSAM's WPL mode). Each slice is cut to the box plus a margin and resized to ``INPUT``² pixels;
the network sees two CT windows and the box as a dense prompt (a filled rectangle channel) and as a
sparse prompt (its corners, Fourier-encoded as in SAM's prompt encoder, added to the bottleneck).
It returns mask logits for the object in the box; the caller pastes them back into the slice.

Slices come from the input reoriented to LPS and resampled in-plane to ``PIXEL_MM`` (z untouched, so
every output slice is an input slice).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.nn import functional as F

from services.common.volume import Volume, reorient, resample

INPUT = 96
PIXEL_MM = 1.5
WINDOWS = ((-1000.0, 1000.0), (-160.0, 240.0))  # whole range; abdominal soft tissue
MARGIN = 0.15  # of the box side, plus MARGIN_PX, on each side
MARGIN_PX = 4


def to_slice_grid(image: Volume) -> Volume:
    """LPS, in-plane ``PIXEL_MM``, the input's slice spacing (HU, float32)."""
    oriented = reorient(image, "LPS")
    as_float = oriented.with_array(np.clip(oriented.array.astype(np.float32), -1024, None))
    return resample(as_float, (PIXEL_MM, PIXEL_MM, oriented.spacing[2]), "linear", default_value=-1024)


def crop_window(box_yx: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """The square-free crop region (y0, x0, y1, x1), exclusive end, around an inclusive box."""
    y0, x0, y1, x1 = box_yx
    my = MARGIN * (y1 - y0 + 1) + MARGIN_PX
    mx = MARGIN * (x1 - x0 + 1) + MARGIN_PX
    return np.array([np.floor(y0 - my), np.floor(x0 - mx), np.ceil(y1 + my) + 1, np.ceil(x1 + mx) + 1], int)


def network_input(slice_hu: np.ndarray, box_yx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (3, INPUT, INPUT), box (4,) in [0, 1] crop units, crop window) for one slice and box."""
    window = crop_window(box_yx, slice_hu.shape)
    region = _cut(slice_hu, window, fill=-1024.0)
    zoom = (INPUT / region.shape[0], INPUT / region.shape[1])
    resized = ndimage.zoom(region, zoom, order=1, mode="nearest", grid_mode=True)[:INPUT, :INPUT]
    channels = [np.clip((resized - lo) / (hi - lo), 0, 1) for lo, hi in WINDOWS]
    box = (box_yx - np.array([window[0], window[1], window[0], window[1]])) / np.array(
        [region.shape[0], region.shape[1], region.shape[0], region.shape[1]], np.float64)
    rect = np.zeros((INPUT, INPUT), np.float32)
    y0, x0, y1, x1 = np.clip(np.round(box * INPUT).astype(int), 0, INPUT - 1)
    rect[y0:y1 + 1, x0:x1 + 1] = 1.0
    return np.stack([*channels, rect]).astype(np.float32), box.astype(np.float32), window


def paste(probability: np.ndarray, window: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """A network-sized probability map back on the slice (zeros outside the crop window)."""
    h, w = window[2] - window[0], window[3] - window[1]
    resized = ndimage.zoom(probability, (h / INPUT, w / INPUT), order=1, mode="nearest", grid_mode=True)[:h, :w]
    out = np.zeros(shape_yx, np.float32)
    ys = slice(max(window[0], 0), min(window[2], shape_yx[0]))
    xs = slice(max(window[1], 0), min(window[3], shape_yx[1]))
    out[ys, xs] = resized[ys.start - window[0]:ys.stop - window[0], xs.start - window[1]:xs.stop - window[1]]
    return out


def _cut(array: np.ndarray, window: np.ndarray, fill: float) -> np.ndarray:
    y0, x0, y1, x1 = window
    out = np.full((y1 - y0, x1 - x0), fill, np.float32)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y1, array.shape[0]), min(x1, array.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.GELU())


class BoxPromptSegmenter(nn.Module):
    """U-Net (96² in, 4 levels) with a dense box channel and a Fourier-encoded sparse box prompt.

    ``base``: channels of the first level (doubled per level); ``fourier_features``: random Fourier features
    per box-corner coordinate pair (SAM's prompt encoding), projected to the bottleneck width.
    """

    def __init__(self, base: int = 16, fourier_features: int = 32) -> None:
        super().__init__()
        c = (base, base * 2, base * 4, base * 8)
        self.enc = nn.ModuleList([_conv(3, c[0]), _conv(c[0], c[1]), _conv(c[1], c[2]), _conv(c[2], c[3])])
        self.dec = nn.ModuleList([_conv(c[3] + c[2], c[2]), _conv(c[2] + c[1], c[1]), _conv(c[1] + c[0], c[0])])
        self.head = nn.Conv2d(c[0], 1, 1)
        # SAM's prompt encoder: random Gaussian Fourier features of point coordinates (fixed, not trained)
        fixed = torch.Generator().manual_seed(0)
        self.register_buffer("frequencies", torch.randn(2, fourier_features, generator=fixed))
        self.prompt = nn.Sequential(nn.Linear(4 * fourier_features, c[3]), nn.GELU(), nn.Linear(c[3], c[3]))

    def forward(self, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """``image (N, 3, H, W)`` float32 (two CT windows in ``[0, 1]`` + the filled box), ``box (N, 4)`` float32
        ``(y0, x0, y1, x1)`` in crop units ``[0, 1]`` → mask logits ``(N, 1, H, W)``; trained at ``H = W = 96``.

        E.g. the ``segmentation_medlsam`` export example (two slices with the liver box):
        ``(2, 3, 96, 96)``, ``(2, 4) → (2, 1, 96, 96)``.
        """
        corners = box.view(-1, 2, 2) * 2 - 1  # two (y, x) corners in [-1, 1]
        projected = 2 * torch.pi * corners @ self.frequencies
        prompt = self.prompt(torch.cat([projected.sin(), projected.cos()], -1).flatten(1))
        skips = []
        x = image
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = x + prompt[:, :, None, None]
        for block, skip in zip(self.dec, reversed(skips[:-1]), strict=True):
            up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([up, skip], 1))
        return self.head(x)

"""Sliding-window inference over a 3D volume with any "batch of patches → logits" predictor.

The predictor is the only thing that knows where the network runs: a Triton client, an
in-process ONNX Runtime session or a PyTorch module all fit, so the stitching is written once.

    inferer = SlidingWindow(roi_size=(64, 128, 128), overlap=0.5, batch_size=2)
    logits = inferer(volume, predict)      # (D, H, W) -> (C, D, H, W)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

# (N, 1, d, h, w) float32 -> (N, C, d, h, w)
Predictor = Callable[[np.ndarray], np.ndarray]
# called with the fraction of windows done
Progress = Callable[[float], None]


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis; the last window touches the border."""
    if roi >= size:
        return [0]
    stride = max(1, int(roi * (1 - overlap)))
    starts = list(range(0, size - roi, stride))
    return starts + [size - roi]


def axis_weights(n: int, sigma_scale: float = 0.125) -> np.ndarray:
    """1D Gaussian (σ = n·sigma_scale), max 1, floored at 0.1 so every voxel gets positive weight."""
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    return np.maximum(np.exp(-0.5 * (x / (n * sigma_scale)) ** 2), 0.1).astype(np.float32)


def gaussian_importance(roi_size: tuple[int, int, int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weight map, the outer product of ``axis_weights`` (so ≥ 1e-3).

    Centre voxels of a window are trusted more than its borders, where context is missing.
    """
    wz, wy, wx = (axis_weights(n, sigma_scale) for n in roi_size)
    return wz[:, None, None] * wy[None, :, None] * wx[None, None, :]


@dataclass(frozen=True)
class SlidingWindow:
    roi_size: tuple[int, int, int]
    overlap: float = 0.5
    batch_size: int = 2
    gaussian: bool = True
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        if len(self.roi_size) != 3 or min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be three positive ints, got {self.roi_size}")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def windows(self, shape: tuple[int, int, int]) -> list[tuple[slice, slice, slice]]:
        per_axis = [window_starts(n, r, self.overlap) for n, r in zip(shape, self.roi_size, strict=True)]
        return [
            tuple(slice(s, s + r) for s, r in zip(start, self.roi_size, strict=True))  # type: ignore[misc]
            for start in itertools.product(*per_axis)
        ]

    def __call__(self, volume: np.ndarray, predict: Predictor, progress: Progress | None = None) -> np.ndarray:
        """Blend window logits of a (D, H, W) volume into (C, D, H, W) float32 logits."""
        if volume.ndim != 3:
            raise ValueError(f"volume must be 3D (D, H, W), got shape {volume.shape}")
        original = volume.shape
        volume = self._pad(volume)
        windows = self.windows(volume.shape)
        axis_w = [axis_weights(r) if self.gaussian else np.ones(r, np.float32) for r in self.roi_size]
        weight = axis_w[0][:, None, None] * axis_w[1][None, :, None] * axis_w[2][None, None, :]

        logits: np.ndarray | None = None  # allocated once the class count is known
        batches = list(_chunks(windows, self.batch_size))

        def run(batch: list[tuple[slice, slice, slice]]) -> np.ndarray:
            patches = np.stack([volume[w] for w in batch])[:, None].astype(np.float32, copy=False)
            out = predict(patches)
            if out.shape[0] != len(batch) or out.shape[2:] != self.roi_size:
                raise ValueError(f"predictor returned {out.shape} for patches {patches.shape}")
            return out

        # one batch in flight while the previous one is stitched: the predictor (a server, or a
        # runtime that releases the GIL) works while numpy adds up weights
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(run, batches[0])
            for i, batch in enumerate(batches):
                out = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(run, batches[i + 1])
                if logits is None:
                    logits = np.zeros((out.shape[1], *volume.shape), dtype=np.float32)
                for w, patch_logits in zip(batch, out, strict=True):
                    logits[(slice(None), *w)] += patch_logits * weight
                if progress is not None:
                    progress(sum(len(b) for b in batches[: i + 1]) / len(windows))
        assert logits is not None  # windows is never empty
        self._normalise(logits, axis_w)
        return logits[(slice(None), *(slice(0, n) for n in original))]

    def _normalise(self, logits: np.ndarray, axis_w: list[np.ndarray]) -> None:
        """Divide by the summed window weights, in place.

        Windows are the Cartesian product of per-axis starts and the weight map is separable, so
        the total weight is the outer product of three 1D sums: no volume-sized weight buffer.
        """
        totals = []
        for size, roi, w in zip(logits.shape[1:], self.roi_size, axis_w, strict=True):
            total = np.zeros(size, np.float32)
            for start in window_starts(size, roi, self.overlap):
                total[start : start + roi] += w
            totals.append(total)
        plane = totals[1][:, None] * totals[2][None, :]
        for z, tz in enumerate(totals[0]):
            logits[:, z] /= tz * plane

    def _pad(self, volume: np.ndarray) -> np.ndarray:
        """Pad at the far end of each axis shorter than the roi (cropped off again afterwards)."""
        pad = [(0, max(0, r - n)) for n, r in zip(volume.shape, self.roi_size, strict=True)]
        if not any(after for _, after in pad):
            return volume
        return np.pad(volume, pad, mode="constant", constant_values=self.pad_value)


def _chunks(items: list[tuple[slice, slice, slice]], size: int) -> Iterator[list[tuple[slice, slice, slice]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

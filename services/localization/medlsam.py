"""MedLSAM: 3D boxes (world mm) → per-slice prompts for the box-prompted segmenter → a label map.

Slices are those of the input reoriented to LPS and resampled in-plane (boxseg.to_slice_grid); the
label map is resampled back onto the input grid (nearest) by the caller. Where boxes of several
structures overlap, each voxel goes to the structure with the highest probability above 0.5.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from services.common.volume import Volume
from services.localization.boxseg import network_input, paste
from services.localization.geometry import mm_to_voxel

# images (N, 3, 96, 96), boxes (N, 4) → mask logits (N, 1, 96, 96)
SegPredict = Callable[[np.ndarray, np.ndarray], np.ndarray]
BATCH = 16


def box_on_grid(grid: Volume, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A world box (x, y, z mm) as a continuous voxel box (z, y, x) on ``grid``."""
    corners = np.array([[x, y, z] for x in (lo_mm[0], hi_mm[0]) for y in (lo_mm[1], hi_mm[1])
                        for z in (lo_mm[2], hi_mm[2])])
    voxels = mm_to_voxel(grid, corners)
    return voxels.min(0), voxels.max(0)


def segment_box(slices: Volume, lo_mm: np.ndarray, hi_mm: np.ndarray, predict: SegPredict) -> np.ndarray:
    """Probability map (z, y, x) on the slice grid of the structure in a world box."""
    lo, hi = box_on_grid(slices, lo_mm, hi_mm)
    probability = np.zeros(slices.shape, np.float32)
    z_range = range(max(int(np.ceil(lo[0] - 0.5)), 0), min(int(np.floor(hi[0] + 0.5)), slices.shape[0] - 1) + 1)
    box_yx = np.array([lo[1], lo[2], hi[1], hi[2]])
    items = [network_input(slices.array[z], box_yx) for z in z_range]
    for start in range(0, len(items), BATCH):
        chunk = items[start:start + BATCH]
        logits = predict(np.stack([c[0] for c in chunk]), np.stack([c[1] for c in chunk]))
        for (_, _, window), logit, z in zip(chunk, logits, z_range[start:start + BATCH], strict=True):
            probability[z] = paste(1 / (1 + np.exp(-logit[0])), window, slices.shape[1:])
    return probability


def label_map(slices: Volume, boxes_mm: Sequence[tuple[np.ndarray, np.ndarray]], predict: SegPredict) -> np.ndarray:
    """uint8 labels (1..n in ``boxes_mm`` order) on the slice grid."""
    best = np.full(slices.shape, 0.5, np.float32)
    labels = np.zeros(slices.shape, np.uint8)
    for value, (lo, hi) in enumerate(boxes_mm, start=1):
        probability = segment_box(slices, lo, hi, predict)
        wins = probability > best
        labels[wins], best[wins] = value, probability[wins]
    return labels


def torch_seg_predictor(model: torch.nn.Module) -> SegPredict:
    def predict(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(images), torch.from_numpy(boxes)).numpy()

    return predict

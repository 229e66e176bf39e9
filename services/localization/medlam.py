"""MedLAM few-shot localization at inference: template embedding, RDR step, MSS refinement.

The network runs behind ``predict`` (Triton in the worker, PyTorch in evaluation); everything else
here is array maths on the MedLAM grid (preprocessing.py), in (z, y, x) voxel coordinates.

Template side, per structure: six extreme points; for each, the RDR vector of a crop centred on it
and the L2-normalised central feature cube at each scale (2³ at ¼, 4³ at ½, 8³ at full resolution:
40 mm at every scale on the 5 mm grid). Several templates: RDR vectors averaged, cubes summed.

Query side: RDR vectors of ``QUERY_CROPS`` crops near the volume centre, averaged, give each point's
position in one step, ``centre + R·tanh(s_j − q)``; then one MSS pass moves each point to the best
match of its cubes in a crop around it (correlation per scale, upsampled, summed, argmax).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from services.localization.geometry import box_from_points, crop
from services.localization.preprocessing import GRID

# crops (N, 1, s, s, s) float32 → rdr (N, 3), features at ¼, ½ and full resolution (N, C, n, n, n)
Predict = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
CUBES = (2, 4, 8)  # cube side per scale (¼, ½, full)
QUERY_CROPS = 10
BATCH = 8


@dataclass
class StructureEmbedding:
    """One structure of one or more templates: per point an RDR vector and a cube per scale."""

    rdr: np.ndarray  # (6, 3)
    cubes: tuple[np.ndarray, np.ndarray, np.ndarray]  # (6, C, k, k, k) per scale
    shots: int = 1

    @staticmethod
    def combine(embeddings: Sequence[StructureEmbedding]) -> StructureEmbedding:
        """Several templates: RDR vectors averaged (weighted by shots), cubes summed."""
        shots = sum(e.shots for e in embeddings)
        rdr = sum(e.rdr * e.shots for e in embeddings) / shots
        cubes = tuple(sum(e.cubes[s] for e in embeddings) for s in range(3))
        return StructureEmbedding(rdr, cubes, shots)  # type: ignore[arg-type]

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        arrays = {f"{prefix}/rdr": self.rdr.astype(np.float32)}
        arrays |= {f"{prefix}/cube{s}": c.astype(np.float16) for s, c in enumerate(self.cubes)}
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> StructureEmbedding:
        cubes = tuple(arrays[f"{prefix}/cube{s}"].astype(np.float32) for s in range(3))
        return cls(arrays[f"{prefix}/rdr"].astype(np.float32), cubes)  # type: ignore[arg-type]


def run_batched(predict: Predict, crops: np.ndarray) -> list[np.ndarray]:
    outputs = [predict(crops[i:i + BATCH]) for i in range(0, len(crops), BATCH)]
    return [np.concatenate([o[k] for o in outputs]) for k in range(4)]


def _centre_cube(features: np.ndarray, k: int, scale: int) -> np.ndarray:
    """The k³ cube around the crop centre of a (N, C, n, n, n) map at downsampling ``scale``."""
    c = GRID.crop // 2 // scale
    cube = features[:, :, c - k // 2:c + k // 2, c - k // 2:c + k // 2, c - k // 2:c + k // 2]
    return cube / np.maximum(np.linalg.norm(cube, axis=1, keepdims=True), 1e-6)


def embed_points(volume: np.ndarray, points: np.ndarray, predict: Predict) -> StructureEmbedding:
    """Embed six points (6, 3) of a template volume on the MedLAM grid."""
    crops = np.stack([crop(volume, p, GRID.crop) for p in points])[:, None]
    rdr, *features = run_batched(predict, crops)
    cubes = tuple(_centre_cube(f, k, s) for f, k, s in zip(features, CUBES, (4, 2, 1), strict=True))
    return StructureEmbedding(rdr, cubes)  # type: ignore[arg-type]


@dataclass
class QueryAnchor:
    """The query's mean RDR vector and the mean centre (voxel) of the crops it came from."""

    rdr: np.ndarray
    centre: np.ndarray

    @classmethod
    def of(cls, volume: np.ndarray, predict: Predict, rng: np.random.Generator) -> QueryAnchor:
        middle = (np.asarray(volume.shape) - 1) / 2
        centres = middle + rng.uniform(-GRID.crop / 4, GRID.crop / 4, size=(QUERY_CROPS, 3))
        centres = np.round(centres)
        crops = np.stack([crop(volume, c, GRID.crop) for c in centres])[:, None]
        rdr = run_batched(predict, crops)[0]
        return cls(rdr.mean(0), centres.mean(0))


def rdr_points(embedding: StructureEmbedding, anchor: QueryAnchor) -> np.ndarray:
    """Coarse positions (6, 3) of the structure's points in the query: one RDR step."""
    offsets_mm = np.asarray(GRID.rdr_range_mm) * np.tanh(embedding.rdr - anchor.rdr)
    return anchor.centre + offsets_mm / GRID.spacing_mm


def mss_refine(volume: np.ndarray, points: np.ndarray, embedding: StructureEmbedding, predict: Predict) -> np.ndarray:
    """Move each point to the best multi-scale feature match within a crop around it."""
    points = np.round(points)
    crops = np.stack([crop(volume, p, GRID.crop) for p in points])[:, None]
    _, *features = run_batched(predict, crops)
    size = GRID.crop
    refined = points.copy()
    for j in range(len(points)):
        total = torch.ones((size,) * 3)
        for fmap, cube in zip(features, embedding.cubes, strict=True):
            f = F.normalize(torch.from_numpy(fmap[j:j + 1]), dim=1)
            w = torch.from_numpy(cube[j:j + 1])
            k = w.shape[-1]
            # 'same' output size; an even cube pads one voxel more after than before
            similarity = F.conv3d(F.pad(f, ((k - 1) // 2, k // 2) * 3), w) / k**3
            total += F.interpolate(similarity, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
        best = np.unravel_index(int(total.argmax()), total.shape)
        # +1: an even cube's centre sits half a voxel before the point it was cut around, and
        # the 'same' padding above shifts the output half a voxel the other way
        refined[j] = points[j] + np.asarray(best) - size // 2 + 1
    return refined


def localize(volume: np.ndarray, embedding: StructureEmbedding, anchor: QueryAnchor, predict: Predict,
             refine: bool = True) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Six points and the box (lo, hi) of a structure in a query volume on the MedLAM grid."""
    points = rdr_points(embedding, anchor)
    if refine:
        points = mss_refine(volume, points, embedding, predict)
    lo, hi = box_from_points(points)
    limit = np.asarray(volume.shape) - 1
    return points, (np.clip(lo, 0, limit), np.clip(hi, 0, limit))


def torch_predictor(model: torch.nn.Module) -> Predict:
    """``predict`` running the network in this process (training checks and evaluation)."""

    def predict(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        with torch.no_grad():
            return tuple(t.numpy() for t in model(torch.from_numpy(np.ascontiguousarray(crops, np.float32))))

    return predict

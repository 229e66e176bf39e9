"""MedLAM few-shot localization at inference: template embedding, RDR step, MSS refinement.

The network runs behind ``predict`` (Triton in the worker, PyTorch in evaluation); everything else
here is array maths on the MedLAM grid (preprocessing.py), in (z, y, x) voxel coordinates.

Template side, per structure: six extreme points; for each, the RDR vector of a crop centred on it
and the L2-normalised central feature cube at each scale (2³ at ¼, 4³ at ½, 8³ at full resolution:
40 mm at every scale on the 5 mm grid). Several templates: RDR vectors averaged, cubes summed.

Query side: RDR vectors of ``QUERY_CROPS`` crops near the volume centre, averaged, give each point's
first position, ``centre + R·tanh(s_j − q)``; iterative RDR then re-runs the network on a crop centred
on each point and moves it by ``R·tanh(s_j − f(crop))`` until every move is below one voxel (at most
``RDR_STEPS`` times); then one coarse-to-fine MSS pass moves each point to the best match of its cubes
in a crop around it (correlation per scale, upsampled; the ¼ and ½ scales choose anywhere in the
crop, the full scale is added and searched near that choice, ``MSS_RADII``).
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
RDR_STEPS = 3  # iterative RDR: re-runs at most, stopping once every point moves less than one voxel
MSS_RADII: tuple[int | None, ...] = (None, None, 3)  # search radius (voxels) per scale; None: the whole crop


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
    """Coarse positions (6, 3) of the structure's points in the query: one RDR step from the anchor."""
    offsets_mm = np.asarray(GRID.rdr_range_mm) * np.tanh(embedding.rdr - anchor.rdr)
    return anchor.centre + offsets_mm / GRID.spacing_mm


class CropCache:
    """The network's outputs for crops of one query volume, by crop centre (voxel): iterative RDR and
    MSS of several structures and shots revisit the same centres. Calling it gives RDR vectors."""

    def __init__(self, volume: np.ndarray, predict: Predict) -> None:
        self.volume, self.predict = volume, predict
        self.known: dict[tuple[int, ...], tuple[np.ndarray, ...]] = {}

    def _outputs(self, centres: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        keys = [tuple(int(v) for v in c) for c in np.round(centres)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.known))
        if todo:
            crops = np.stack([crop(self.volume, np.asarray(k), GRID.crop) for k in todo])[:, None]
            outputs = run_batched(self.predict, crops)
            for i, key in enumerate(todo):
                self.known[key] = tuple(o[i] for o in outputs)
        return [self.known[k] for k in keys]

    def __call__(self, centres: np.ndarray) -> np.ndarray:
        return np.stack([o[0] for o in self._outputs(centres)])

    def features(self, centres: np.ndarray) -> list[np.ndarray]:
        """Feature maps at ¼, ½ and full resolution, each (n, C, s, s, s)."""
        outputs = self._outputs(centres)
        return [np.stack([o[s] for o in outputs]) for s in (1, 2, 3)]


RdrCache = CropCache  # the RDR-only name of the same cache


def iterative_rdr(volume: np.ndarray, embedding: StructureEmbedding, anchor: QueryAnchor, predict: Predict,
                  steps: int = RDR_STEPS, cache: CropCache | None = None) -> np.ndarray:
    """Whole-volume iterative RDR: from the anchor's one-step estimate, re-run RDR on a crop centred on
    each current point and move by ``R·tanh(s_j − f(crop))`` until every move is below one voxel (or
    ``steps`` re-runs). Points are kept inside the volume (a crop centred outside would show nothing)."""
    cache = cache or CropCache(volume, predict)
    limit = np.asarray(volume.shape) - 1
    points = np.clip(rdr_points(embedding, anchor), 0, limit)
    for _ in range(steps):
        here = np.round(points)
        offsets_mm = np.asarray(GRID.rdr_range_mm) * np.tanh(embedding.rdr - cache(here))
        moved = np.clip(here + offsets_mm / GRID.spacing_mm, 0, limit)
        done = np.max(np.abs(moved - points)) < 1.0
        points = moved
        if done:
            break
    return points


def _similarity(fmap: np.ndarray, cube: np.ndarray, size: int) -> torch.Tensor:
    """Cosine similarity of a (C, n, n, n) feature map with a (C, k, k, k) cube, upsampled to size³."""
    f = F.normalize(torch.from_numpy(fmap[None]), dim=1)
    w = torch.from_numpy(cube[None])
    k = w.shape[-1]
    # 'same' output size; an even cube pads one voxel more after than before
    similarity = F.conv3d(F.pad(f, ((k - 1) // 2, k // 2) * 3), w) / k**3
    return F.interpolate(similarity, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]


def _argmax_near(total: torch.Tensor, centre: np.ndarray | None, radius: int) -> np.ndarray:
    """Argmax of a map, within ``radius`` voxels (Chebyshev) of ``centre`` when given."""
    if centre is not None:
        lo = np.clip(centre - radius, 0, None).astype(int)
        hi = np.minimum(centre + radius + 1, total.shape).astype(int)
        window = total[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        return lo + np.asarray(np.unravel_index(int(window.argmax()), window.shape))
    return np.asarray(np.unravel_index(int(total.argmax()), total.shape))


def _full_similarity_near(fmap: np.ndarray, cube: np.ndarray, centre: np.ndarray, radius: int) -> tuple[
        torch.Tensor, np.ndarray]:
    """The full-resolution similarity map only within ``radius`` of ``centre`` (the same values as
    ``_similarity`` there): (window map, its first voxel)."""
    f = F.normalize(torch.from_numpy(fmap[None]), dim=1)
    w = torch.from_numpy(cube[None])
    k = w.shape[-1]
    padded = F.pad(f, ((k - 1) // 2, k // 2) * 3)
    size = fmap.shape[-1]
    lo = np.clip(centre - radius, 0, size - 1).astype(int)
    hi = np.clip(centre + radius, 0, size - 1).astype(int)
    block = padded[..., lo[0]:hi[0] + k, lo[1]:hi[1] + k, lo[2]:hi[2] + k]
    return F.conv3d(block, w)[0, 0] / k**3, lo


def mss_refine(volume: np.ndarray, points: np.ndarray, embedding: StructureEmbedding, predict: Predict,
               radii: Sequence[int | None] = MSS_RADII, cache: CropCache | None = None) -> np.ndarray:
    """Move each point to the best multi-scale feature match within a crop around it, coarse to fine:
    the similarity maps of the scales (¼, ½, full) are added one at a time, and after each the argmax
    is searched within ``radii[s]`` voxels of the previous one (None: anywhere in the crop). The
    default lets the ¼ + ½ maps choose anywhere and the full-resolution map only near that choice
    (fine texture repeats across a 160 mm crop; a 2³ cube at ¼ alone is too coarse to choose); the
    full-resolution correlation is then computed only in that window."""
    points = np.round(points)
    features = (cache or CropCache(volume, predict)).features(points)
    size = GRID.crop
    refined = points.copy()
    for j in range(len(points)):
        total = torch.ones((size,) * 3)
        best = None
        for s, (fmap, cube, radius) in enumerate(zip(features, embedding.cubes, radii, strict=True)):
            if s == 2 and radius is not None and best is not None:  # the finest scale, in its window only
                window, lo = _full_similarity_near(fmap[j], cube[j], best, radius)
                hi = lo + np.asarray(window.shape)
                local = total[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] + window
                best = lo + np.asarray(np.unravel_index(int(local.argmax()), local.shape))
                continue
            total = total + _similarity(fmap[j], cube[j], size)
            best = _argmax_near(total, best if radius is not None else None, radius or 0)
        # +1: an even cube's centre sits half a voxel before the point it was cut around, and
        # the 'same' padding above shifts the output half a voxel the other way
        refined[j] = points[j] + best - size // 2 + 1
    return refined


def localize(volume: np.ndarray, embedding: StructureEmbedding, anchor: QueryAnchor, predict: Predict,
             refine: bool = True, rdr_steps: int = RDR_STEPS,
             cache: CropCache | None = None) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Six points and the box (lo, hi) of a structure in a query volume on the MedLAM grid: iterative
    RDR (``rdr_steps`` re-runs at most; 0 = the single step from the anchor), then coarse-to-fine MSS."""
    cache = cache or CropCache(volume, predict)
    points = iterative_rdr(volume, embedding, anchor, predict, rdr_steps, cache)
    if refine:
        points = mss_refine(volume, points, embedding, predict, cache=cache)
    lo, hi = box_from_points(points)
    limit = np.asarray(volume.shape) - 1
    return points, (np.clip(lo, 0, limit), np.clip(hi, 0, limit))


def torch_predictor(model: torch.nn.Module) -> Predict:
    """``predict`` running the network in this process (training checks and evaluation)."""

    def predict(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        with torch.no_grad():
            return tuple(t.numpy() for t in model(torch.from_numpy(np.ascontiguousarray(crops, np.float32))))

    return predict

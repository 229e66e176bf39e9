"""PyTorch -> ONNX, checked: ``onnx.checker``, optional onnxslim, then parity against PyTorch."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.spec import ExportSpec

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model could not be exported, or its ONNX graph disagrees with PyTorch."""


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime vs PyTorch on the same inputs, over every output."""

    max_abs: float
    max_rel: float  # max |ort - torch| / max |torch|, per output, worst output
    atol: float
    rtol: float
    inputs: str  # what the inputs were, for the manifest

    @property
    def ok(self) -> bool:
        return self.max_abs <= self.atol or self.max_rel <= self.rtol

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


def export_onnx(spec: ExportSpec, model: torch.nn.Module, inputs: dict[str, np.ndarray], path: Path) -> None:
    tensors = tuple(torch.from_numpy(inputs[t.name]) for t in spec.inputs)
    names_in = [t.name for t in spec.inputs]
    names_out = [t.name for t in spec.outputs]
    # batch axis always dynamic; other axes where the spec says -1
    dynamic = {
        t.name: {0: "batch"} | {i + 1: f"{t.name}_dim{i + 1}" for i, d in enumerate(t.shape) if d < 0}
        for t in spec.inputs + spec.outputs
    }
    with torch.no_grad():
        try:
            torch.onnx.export(
                model, tensors, str(path), input_names=names_in, output_names=names_out,
                dynamic_axes=dynamic, opset_version=spec.opset, dynamo=spec.dynamo,
            )
        except Exception as error:  # exporter errors come in many types; name the model
            raise ExportError(f"{spec.name}: torch.onnx.export failed: {error}") from error
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{spec.name}: exported graph fails onnx.checker: {error}") from error


def simplify(path: Path) -> bool:
    """Constant-fold and clean the graph in place with onnxslim; keep the original if it fails."""
    try:
        import onnxslim

        slim = onnxslim.slim(onnx.load(str(path)))
        onnx.checker.check_model(slim)
    except Exception as error:  # simplification is an optimisation, never a reason to fail
        log.warning("onnxslim skipped: %s", error)
        return False
    onnx.save(slim, str(path))
    return True


def _runner(path: Path, runtime: str) -> Callable[[list[str], dict[str, np.ndarray]], list[np.ndarray]]:
    """``(output names, feed) -> outputs`` with ONNX Runtime's CPU provider or OpenVINO at fp32."""
    if runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()

        def run(names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            results = request.infer(feed)
            return [np.array(results[compiled.output(name)]) for name in names]

        return run
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run


def check_parity(
    spec: ExportSpec, model: torch.nn.Module, path: Path, batches: list[dict[str, np.ndarray]], described: str,
    runtime: str = "onnxruntime",
) -> Parity:
    """The ONNX file run by ``runtime`` (fp32) against PyTorch; ``ExportError`` beyond the spec's tolerance."""
    run = _runner(path, runtime)
    worst_abs = worst_rel = 0.0
    for feed in batches:
        with torch.no_grad():
            expected = model(*(torch.from_numpy(feed[t.name]) for t in spec.inputs))
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        got = run([t.name for t in spec.outputs], feed)
        for want, have in zip(expected, got, strict=True):
            want_np = want.detach().numpy().astype(np.float64)
            if want_np.shape != have.shape:
                raise ExportError(f"{spec.name}: ONNX output shape {have.shape} != PyTorch {want_np.shape}")
            diff = float(np.max(np.abs(want_np - have.astype(np.float64)), initial=0.0))
            scale = float(np.max(np.abs(want_np), initial=0.0)) or 1.0
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, diff / scale)
    parity = Parity(worst_abs, worst_rel, spec.parity_atol, spec.parity_rtol, described)
    if not parity.ok:
        raise ExportError(
            f"{spec.name}: {runtime} differs from PyTorch by max-abs {worst_abs:.3g} "
            f"(tolerance {spec.parity_atol:g}) / relative {worst_rel:.3g} (tolerance {spec.parity_rtol:g})"
        )
    return parity

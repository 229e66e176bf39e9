"""The one road from a checkpoint to a served model version.

    export_model(get_spec("reference_hutissue"), Path("model_repository"))

writes ``<repo>/<name>/<version>/{model.onnx, model.py, manifest.json}`` and the model's configs
(see export/triton_config.py). Each export is a new version folder; Triton's version policy
decides which versions are served. The manifest records the git commit and whether tracked files
differed from it (``dirty``); refusing a dirty tree is ``medstack export``'s job
(``export.manifest.require_clean_tree``), so tests export toy models into temporary repositories
from any working tree.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from export import tensorrt
from export.manifest import git_provenance, sha256_file, versions, write_manifest
from export.onnx_export import check_parity, export_onnx, simplify
from export.precision import decide as decide_precision
from export.spec import ExportSpec
from export.triton_config import CONFIG_FILES, Flavour, render_config

log = logging.getLogger(__name__)

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class ExportResult:
    name: str
    version: int
    version_dir: Path
    manifest: dict[str, Any]


def write_configs(spec: ExportSpec, model_dir: Path, with_tensorrt: bool, precision: str = "fp32") -> None:
    flavours = [Flavour.CPU, Flavour.GPU, Flavour.EMBEDDED] + ([Flavour.TENSORRT] if with_tensorrt else [])
    for flavour in flavours:
        path = model_dir / CONFIG_FILES[flavour]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_config(spec, flavour, precision))


def serving_precision(spec: ExportSpec, model: torch.nn.Module, onnx_path: Path,
                      batches: list[dict[str, np.ndarray]], described: str) -> dict[str, Any]:
    """The manifest's ``precision`` block (export/precision.py); an OpenVINO-served model's fp32
    answers are first checked against PyTorch like ONNX Runtime's."""
    block = decide_precision(spec.runtime, spec.precision, spec.precision_case, onnx_path)
    if spec.runtime == "openvino":
        import openvino

        checked = check_parity(spec, model, onnx_path, batches, described, runtime="openvino")
        block |= {"openvino": openvino.__version__, "fp32_parity": checked.as_dict()}
    return block


def _batch(inputs: dict[str, np.ndarray]) -> int:
    return len(next(iter(inputs.values())))


def _perturbed(inputs: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """The real inputs plus mild noise and a batch of one: parity beyond the traced example."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, array in inputs.items():
        if np.issubdtype(array.dtype, np.floating):
            scale = float(np.std(array)) or 1.0
            array = array + rng.normal(0, 0.05 * scale, array.shape).astype(array.dtype)
        out[name] = np.ascontiguousarray(array[:1])
    return out


def export_model(spec: ExportSpec, repository: Path, build_tensorrt: bool = False) -> ExportResult:
    if build_tensorrt:
        tensorrt.require_tensorrt()  # fail before spending minutes on the export
    model_dir = repository / spec.name
    version = (versions(model_dir) or [0])[-1] + 1
    model = spec.build_model()
    inputs = spec.example_inputs()

    with tempfile.TemporaryDirectory(prefix=f"export-{spec.name}-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        torch.manual_seed(0)
        export_onnx(spec, model, inputs, onnx_path)
        simplified = simplify(onnx_path)
        batches = [inputs, _perturbed(inputs)]
        described = f"real example inputs (batch {_batch(inputs)}) and the same with 5% noise (batch 1)"
        parity = check_parity(spec, model, onnx_path, batches, described)
        precision_block = serving_precision(spec, model, onnx_path, batches, described)
        version_dir = model_dir / str(version)
        version_dir.mkdir(parents=True)
        shutil.move(str(onnx_path), version_dir / "model.onnx")
    shutil.copy2(PYTHON_MODEL, version_dir / "model.py")
    if build_tensorrt:
        tensorrt.build_plan(spec, version_dir / "model.onnx", version_dir / "model.plan")
    write_configs(spec, model_dir, with_tensorrt=build_tensorrt, precision=precision_block["served"])

    onnx_model = onnx.load(str(version_dir / "model.onnx"), load_external_data=False)
    manifest = {
        "model": spec.name,
        "version": version,
        "description": spec.description,
        "sha256": sha256_file(version_dir / "model.onnx"),
        "onnx_bytes": (version_dir / "model.onnx").stat().st_size,
        "opset": spec.opset,
        "exporter": "dynamo" if spec.dynamo else "torchscript",
        "simplified_with_onnxslim": simplified,
        "ir_version": onnx_model.ir_version,
        "inputs": [{"name": t.name, "dtype": t.dtype, "shape": [-1, *t.shape]} for t in spec.inputs],
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": [-1, *t.shape]} for t in spec.outputs],
        "checkpoint": _checkpoint_facts(spec),
        "training": spec.training,
        "preprocessing": spec.preprocessing(),
        "validation_metrics": spec.validation_metrics(),
        "parity": parity.as_dict(),
        "precision": precision_block,
        "tensorrt_plan_sha256": sha256_file(version_dir / "model.plan") if build_tensorrt else None,
        **git_provenance(),
        "toolchain": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }
    write_manifest(version_dir, manifest)
    log.info("exported %s version %d (max-abs %.3g)", spec.name, version, parity.max_abs)
    return ExportResult(spec.name, version, version_dir, manifest)


def _checkpoint_facts(spec: ExportSpec) -> dict[str, str] | None:
    if spec.checkpoint is None:
        return None
    from core.settings import REPO_ROOT

    path = spec.checkpoint.resolve()
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return {"path": str(shown), "sha256": sha256_file(path)}

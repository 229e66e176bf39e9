"""export/: configs per flavour, parity that can fail, manifest provenance, TensorRT on CPU hosts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from export import tensorrt
from export.manifest import sha256_file, versions
from export.onnx_export import ExportError
from export.pipeline import export_model
from export.spec import BatchingSpec, ExportSpec, TensorSpec
from export.triton_config import Flavour, render_config


class Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool3d(x, 3, 1, 1) * 2 + 1


class ExportsWrongly(Scale):
    """Differs between tracing and eager runs: the parity check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return out if torch.jit.is_tracing() else out + 0.5


def _spec(model: type[torch.nn.Module] = Scale, **overrides: object) -> ExportSpec:
    rng = np.random.default_rng(0)
    base = ExportSpec(
        name="test_scale",
        description="test",
        build_model=lambda: model().eval(),
        example_inputs=lambda: {"image": rng.normal(size=(2, 1, 8, 16, 16)).astype(np.float32)},
        inputs=(TensorSpec("image", "float32", (1, 8, 16, 16)),),
        outputs=(TensorSpec("logits", "float32", (1, 8, 16, 16)),),
        batching=BatchingSpec(max_batch_size=4, preferred_batch_sizes=(2, 4), max_queue_delay_us=500),
    )
    return dataclasses.replace(base, **overrides)


@pytest.mark.parametrize("flavour", list(Flavour))
def test_config_has_batching_and_tensors_from_the_spec(flavour: Flavour) -> None:
    text = render_config(_spec(), flavour)
    assert 'name: "test_scale"' in text
    assert "max_batch_size: 4" in text
    assert "preferred_batch_size: [ 2, 4 ]" in text and "max_queue_delay_microseconds: 500" in text
    assert "dims: [ 1, 8, 16, 16 ]" in text  # without the batch axis
    expected = {
        Flavour.CPU: ('backend: "onnxruntime"', "KIND_CPU"),
        Flavour.GPU: ('backend: "onnxruntime"', "KIND_GPU"),
        Flavour.EMBEDDED: ('backend: "python"', "KIND_CPU"),
        Flavour.TENSORRT: ('platform: "tensorrt_plan"', "KIND_GPU"),
    }[flavour]
    for piece in expected:
        assert piece in text
    assert ('name: "tensorrt"' in text) == (flavour is Flavour.GPU)


def test_tensorrt_profile_spans_batch_sizes() -> None:
    cmd = tensorrt.trtexec_command(_spec(), Path("m.onnx"), Path("m.plan"))
    assert "--minShapes=image:1x1x8x16x16" in cmd
    assert "--optShapes=image:4x1x8x16x16" in cmd and "--maxShapes=image:4x1x8x16x16" in cmd
    assert "--fp16" in cmd
    dynamic = _spec(inputs=(TensorSpec("image", "float32", (1, -1, 16, 16)),))
    with pytest.raises(ExportError, match="static"):
        tensorrt.shape_profile(dynamic)


def test_tensorrt_export_on_a_cpu_host_stops_with_a_clear_message(tmp_path: Path) -> None:
    if tensorrt.gpu_present():
        pytest.skip("this host has a GPU")
    with pytest.raises(ExportError, match="NVIDIA GPU"):
        export_model(_spec(), tmp_path, build_tensorrt=True)
    assert not (tmp_path / "test_scale").exists(), "nothing is written when TensorRT cannot run"


def test_export_writes_version_with_manifest_and_every_config(tmp_path: Path) -> None:
    first = export_model(_spec(), tmp_path)
    second = export_model(_spec(), tmp_path)
    model_dir = tmp_path / "test_scale"
    assert (first.version, second.version) == (1, 2) and versions(model_dir) == [1, 2]
    for name in ("config.pbtxt", "configs/gpu.pbtxt", "configs/embedded.pbtxt"):
        assert (model_dir / name).is_file()
    manifest = json.loads((second.version_dir / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_file(second.version_dir / "model.onnx")
    assert manifest["parity"]["ok"] and manifest["parity"]["max_abs"] < 1e-4
    assert manifest["opset"] >= 17 and manifest["git_commit"]
    assert (second.version_dir / "model.py").is_file()


def test_parity_failure_stops_the_export(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(_spec(ExportsWrongly), tmp_path)
    assert versions(tmp_path / "test_scale") == []


def test_bad_names_and_dtypes_are_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        _spec(name="Bad-Name")
    with pytest.raises(ValueError, match="dtype"):
        TensorSpec("x", "complex64", (1,))

"""export/: configs per flavour, parity that can fail, manifest provenance, TensorRT on CPU hosts, and
`medstack export` refusing a dirty tree unless --allow-dirty."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from core.settings import settings
from export import manifest as manifest_module
from export import registry, tensorrt
from export.manifest import DirtyTreeError, git_provenance, require_clean_tree, sha256_file, versions
from export.onnx_export import ExportError
from export.pipeline import export_model
from export.spec import BatchingSpec, ExportSpec, TensorSpec
from export.triton_config import Flavour, render_config
from medstack.cli import app


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
    assert manifest["opset"] >= 17 and manifest["git_commit"] and isinstance(manifest["dirty"], bool)
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


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                   capture_output=True)


def test_dirty_tree_is_tracked_changes_only(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text("x = 1\n")
    _git(tmp_path, "add", "a.py", "b.py")
    _git(tmp_path, "commit", "-qm", "init")
    (tmp_path / "untracked.py").write_text("y = 2\n")
    assert require_clean_tree(root=tmp_path) == []  # untracked files do not count
    assert git_provenance(tmp_path)["dirty"] is False
    (tmp_path / "b.py").write_text("x = 2\n")
    with pytest.raises(DirtyTreeError, match="--allow-dirty") as error:
        require_clean_tree(root=tmp_path)
    assert "b.py" in str(error.value) and "a.py" not in str(error.value) and "untracked" not in str(error.value)
    assert require_clean_tree(allow_dirty=True, root=tmp_path) == ["b.py"]
    provenance = git_provenance(tmp_path)
    assert provenance["dirty"] is True and provenance["git_commit"].endswith("+dirty")


@pytest.fixture
def dirty_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`medstack export test_scale` into tmp_path, from a tree where one tracked file is changed."""
    monkeypatch.setattr(manifest_module, "changed_files", lambda root=None: ["services/changed.py"])
    monkeypatch.setattr(registry, "get_spec", lambda name: _spec())
    monkeypatch.setattr(settings, "model_repository", tmp_path)
    return tmp_path / "test_scale"


def test_medstack_export_refuses_a_dirty_tree(dirty_cli: Path) -> None:
    result = CliRunner().invoke(app, ["export", "test_scale"])
    assert result.exit_code == 1
    assert "services/changed.py" in result.output and "--allow-dirty" in result.output
    assert versions(dirty_cli) == [], "nothing is written"


def test_medstack_export_allow_dirty_records_it(dirty_cli: Path) -> None:
    result = CliRunner().invoke(app, ["export", "test_scale", "--allow-dirty"])
    assert result.exit_code == 0, result.output
    written = json.loads((dirty_cli / "1" / "manifest.json").read_text())
    assert written["dirty"] is True and written["git_commit"].endswith("+dirty")
    # --if-missing with every model present exports nothing, so a dirty tree is no reason to refuse
    again = CliRunner().invoke(app, ["export", "test_scale", "--if-missing"])
    assert again.exit_code == 0 and "present, skipped" in again.output and versions(dirty_cli) == [1]

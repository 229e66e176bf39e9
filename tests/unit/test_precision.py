"""export/precision.py: the bf16 policy decides from label parity on a real volume, and says why."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from export import precision
from export.pipeline import export_model
from export.precision import PrecisionCase, decide, label_parity
from export.triton_config import Flavour, render_config
from services.common.sliding_window import SlidingWindow
from tests.unit.test_export import _spec


def test_label_parity_counts_agreement_and_dice_per_present_class() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    a[:2] = 1
    b = a.copy()
    b[0, 0, :2] = 0  # two voxels of class 1 lost
    parity = label_parity(a, b, ("background", "liver", "spleen"))
    assert parity["argmax_agreement"] == pytest.approx(1 - 2 / 64)
    assert parity["dice"]["liver"] == pytest.approx(2 * 30 / (32 + 30), abs=1e-5)
    assert "spleen" not in parity["dice"]  # in neither map
    assert parity["min_dice"] == parity["dice"]["liver"]


def test_fp32_policy_and_onnxruntime_serve_fp32_without_a_check(tmp_path: Path) -> None:
    assert decide("onnxruntime", "fp32", None, tmp_path / "none.onnx")["served"] == "fp32"
    block = decide("onnxruntime", "bf16", None, tmp_path / "none.onnx")
    assert block["served"] == "fp32" and block["reason"] == "fp32 by the model's policy"


def test_bf16_is_refused_without_native_bf16(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    block = decide("openvino", "bf16", None, tmp_path / "none.onnx")
    assert block["served"] == "fp32" and block["cpu_bf16"] is False


@pytest.mark.parametrize("agreeing", [True, False])
def test_export_serves_bf16_only_when_the_labels_agree(monkeypatch, tmp_path: Path, agreeing: bool) -> None:
    """The toy model through the real pipeline: bf16 where both thresholds hold, else fp32 with the figures."""
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)

    def predictor(path: Path, name: str, threads: int = 0):  # two classes: the sign of the input
        sign = -1 if name == "bf16" and not agreeing else 1
        return lambda x: np.concatenate([sign * x, -sign * x], axis=1)

    monkeypatch.setattr(precision, "openvino_predictor", predictor)
    volume = np.random.default_rng(0).normal(size=(16, 32, 32)).astype(np.float32)
    case = PrecisionCase(volume, SlidingWindow((8, 16, 16), batch_size=2), ("positive", "negative"), "noise")
    spec = dataclasses.replace(_spec(), runtime="openvino", precision="bf16", precision_case=lambda: case)
    result = export_model(spec, tmp_path)
    block = result.manifest["precision"]
    assert block["served"] == ("bf16" if agreeing else "fp32")
    assert block["fp32_parity"]["ok"] and "argmax_agreement" in block["parity"]
    embedded = (tmp_path / "test_scale" / "configs" / "embedded.pbtxt").read_text()
    assert f'key: "precision" value: {{ string_value: "{block["served"]}" }}' in embedded
    assert 'key: "runtime" value: { string_value: "openvino" }' in embedded


def test_native_cpu_config_names_the_openvino_accelerator() -> None:
    text = render_config(dataclasses.replace(_spec(), runtime="openvino"), Flavour.CPU)
    assert 'cpu_execution_accelerator: [ { name: "openvino" } ]' in text
    assert "openvino" not in render_config(_spec(), Flavour.CPU)

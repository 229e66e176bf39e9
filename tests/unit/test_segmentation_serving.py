"""The served model: contract, real-CT example patch, ONNX export parity with a dynamic batch axis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.segmentation import serving

pytestmark = pytest.mark.skipif(not serving.checkpoint_path().is_file(), reason="no committed checkpoint")


def test_served_contract() -> None:
    model = serving.load_served_model()
    assert not model.training
    spec = serving.preprocessing_spec()
    assert spec["patch_size"] == list(serving.PATCH_SIZE) and len(spec["classes"]) == serving.NUM_CLASSES
    metrics = serving.validation_metrics()
    assert metrics["task"] == "segmentation" and metrics["iterations"] > 0


def test_onnx_export_parity_on_a_real_ct_patch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = serving.load_served_model()
    patch = serving.example_patch()
    assert patch.shape == (1, 1, *serving.PATCH_SIZE) and patch.dtype == np.float32
    assert -1.0 <= patch.min() < patch.max() <= 1.0  # preprocessed real CT (air and tissue)
    path = tmp_path / "model.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(patch),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.concatenate([patch, np.ascontiguousarray(patch[:, :, :, ::-1])])  # batch of 2 from a batch-1 export
    got = session.run(None, {"image": batch})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(batch)).numpy()
    assert got.shape == (2, serving.NUM_CLASSES, *serving.PATCH_SIZE)
    assert np.abs(got - want).max() < 1e-3

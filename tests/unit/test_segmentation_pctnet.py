"""PCT-Net: shapes, early validation, ONNX export with a dynamic batch axis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from services.segmentation.pctnet import CPU_CONFIG, PAPER_CONFIG, PCTNet, build_pctnet, count_parameters

TINY = dict(spatial_dims=3, in_channels=1, out_channels=3, input_size=(16, 32, 32),
            feature_channels=(4, 8, 16, 16, 32), num_heads=(2, 2, 4), window_size=(2, 2, 2), drop_path=0.1)


@pytest.mark.parametrize(
    ("mode", "size"),
    [(0, (16, 32, 32)), (1, (8, 32, 32)), (1, (16, 16, 48)), (2, (4, 32, 32))],
)
def test_output_shape_per_resolution_mode(mode: int, size: tuple[int, int, int]) -> None:
    net = PCTNet(**{**TINY, "resolution_mode": mode, "input_size": size}).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)


def test_train_step_reaches_every_parameter() -> None:
    net = PCTNet(**TINY)
    net(torch.randn(2, 1, 16, 32, 32)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ({"spatial_dims": 2}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 1}, "out_channels"),
        ({"resolution_mode": 3}, "resolution_mode"),
        ({"input_size": (16, 30, 32)}, "input_size"),
        ({"input_size": (16, 32)}, "input_size"),
        ({"feature_channels": (4, 8, 16, 16)}, "feature_channels"),
        ({"dropout": (0.0, 0.0, 1.0, 0.0, 0.0)}, "dropout"),
        ({"depths": (2, 0, 2)}, "depths"),
        ({"num_heads": (3, 2, 4)}, "num_heads"),
        ({"window_size": (0, 2, 2)}, "window_size"),
        ({"drop_path": -0.1}, "drop_path"),
    ],
)
def test_bad_config_raises_naming_the_argument(override: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PCTNet(**{**TINY, **override})


def test_wrong_input_size_is_refused() -> None:
    net = PCTNet(**TINY).eval()
    with pytest.raises(ValueError, match="spatial size"):
        net(torch.zeros(1, 1, 16, 32, 48))


def test_shipped_config_is_a_few_million_parameters() -> None:
    n = count_parameters(build_pctnet(dataclasses.replace(CPU_CONFIG, out_channels=12)))
    assert 1_000_000 < n < 6_000_000
    assert PAPER_CONFIG.input_size == (64, 128, 128) and PAPER_CONFIG.feature_channels[-1] == 512


def test_config_round_trips_through_dict() -> None:
    cfg = dataclasses.replace(CPU_CONFIG, out_channels=12)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_onnx_export_dynamic_batch_matches_pytorch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = PCTNet(**TINY).eval()
    # non-trivial batch-norm statistics so that parity is not tested on an identity-like net
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "tiny.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.randn(1, 1, 16, 32, 32),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).uniform(-1, 1, (batch, 1, 16, 32, 32)).astype(np.float32)
        got = session.run(None, {"image": x})[0]
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        assert got.shape == want.shape
        assert np.abs(got - want).max() < 1e-3

"""Every model in the repository answers over HTTP and gRPC with the numbers ONNX Runtime gives.

Guards the known python-backend failure: with numpy >= 2 in the stub's environment every output
tensor comes back empty without an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.manifest import latest_manifest

pytestmark = pytest.mark.integration


def _models(repo: Path) -> list[str]:
    return sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))


def _example_inputs(manifest: dict) -> dict[str, np.ndarray]:
    """Batch-2 float32 noise for every input; dynamic axes get 24."""
    rng = np.random.default_rng(7)
    return {t["name"]: rng.normal(-200, 400, [2] + [d if d > 0 else 24 for d in t["shape"][1:]]).astype(np.float32)
            for t in manifest["inputs"]}


def _float_onnx_models(repo: Path) -> list[tuple[str, dict]]:
    """ONNX models whose inputs are all float32 (token decoders and python-backend decode loops
    have their own round-trip tests: tests/integration/test_report_gateway.py, test_dialogue_*.py)."""
    found = []
    for name in _models(repo):
        manifest = latest_manifest(repo / name)
        if manifest.get("backend") != "python" and all(t["dtype"] == "float32" for t in manifest["inputs"]):
            found.append((name, manifest))
    return found


def test_every_model_round_trips_over_http_and_grpc(triton, model_repository: Path) -> None:
    models = _float_onnx_models(model_repository)
    assert models, "the model repository is empty"
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    http = httpclient.InferenceServerClient(triton.http_url)
    for name, manifest in models:
        version_dir = model_repository / name / str(manifest["version"])
        out_name = manifest["outputs"][0]["name"]
        feed = _example_inputs(manifest)
        expected = ort.InferenceSession(str(version_dir / "model.onnx")).run([out_name], feed)[0]

        g_in, h_in = [], []
        for in_name, x in feed.items():
            g_in.append(grpcclient.InferInput(in_name, list(x.shape), "FP32"))
            g_in[-1].set_data_from_numpy(x)
            h_in.append(httpclient.InferInput(in_name, list(x.shape), "FP32"))
            h_in[-1].set_data_from_numpy(x)
        via_grpc = grpc.infer(name, g_in).as_numpy(out_name)
        via_http = http.infer(name, h_in).as_numpy(out_name)

        bf16 = manifest.get("precision", {}).get("served") == "bf16"
        for got in (via_grpc, via_http):
            assert got is not None and got.size > 0, f"{name}: empty output (stub numpy >= 2?)"
            assert got.shape == expected.shape
            if bf16:  # served in bf16 (export/precision.py): close to fp32, the same classes almost everywhere
                assert np.max(np.abs(got - expected)) <= 0.02 * np.max(np.abs(expected)), name
                assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.98, name
            elif manifest.get("precision", {}).get("runtime") == "openvino":
                # fp32 through OpenVINO's kernels, not ONNX Runtime's: another summation order, so the error
                # scales with the activations (this noise drives PCT-Net's logits into the thousands)
                np.testing.assert_allclose(got, expected, rtol=1e-3, atol=max(1e-4, 1e-5 * np.max(np.abs(expected))))
            else:
                np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        # a different input must give a different answer: the server is not echoing a constant (where the
        # reference itself differs: a saturated probability, e.g. umcam_cam's presence, is 1.0 for both)
        if not np.allclose(expected[0], expected[1]):
            assert not np.allclose(via_grpc[0], via_grpc[1]), name


def test_shape_errors_are_reported_not_crashing(triton) -> None:
    grpc = grpcclient.InferenceServerClient(triton.grpc_url)
    bad = grpcclient.InferInput("image", [1, 2, 8, 8, 8], "FP32")  # two channels where one is expected
    bad.set_data_from_numpy(np.zeros((1, 2, 8, 8, 8), np.float32))
    with pytest.raises(Exception, match="(?i)shape|dim"):
        grpc.infer("reference_hutissue", [bad])
    assert grpc.is_server_live()


def test_shared_memory_and_plain_grpc_give_the_same_logits(triton) -> None:
    from workers.triton_predictor import TritonPredictor

    x = np.random.default_rng(3).normal(-300, 500, (2, 1, 16, 32, 32)).astype(np.float32)
    shared = TritonPredictor("reference_hutissue", triton.grpc_url, shared_memory=True)
    plain = TritonPredictor("reference_hutissue", triton.grpc_url, shared_memory=False)
    try:
        via_shm = shared(x)
        assert shared.shared_memory, "shared memory fell back to gRPC on the same host"
        np.testing.assert_array_equal(via_shm, plain(x))
        # a larger batch re-sizes the regions
        big = np.concatenate([x, x])
        np.testing.assert_array_equal(shared(big)[2:], via_shm)
    finally:
        shared.close()
        plain.close()

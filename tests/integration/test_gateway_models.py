"""Models through the gateway: the catalog, small inference equal to Triton's own answer, the ways a
request is refused, and the gateway staying up (503 + Retry-After) while Triton is down."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from core.settings import settings
from core.triton import TritonServer, prepare_runtime, stop_process_group
from export.manifest import latest_manifest
from medstack.stack import free_port
from tests.conftest import BOOTSTRAP_KEY, create_api_key, start_gateway

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"
NPY = "application/x-npy"


def patch(shape: tuple[int, ...] = (1, 1, 16, 32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1100, 1500, shape).astype(np.float32)


def direct(triton, x: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        tensor = grpcclient.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.infer(MODEL, [tensor]).as_numpy("logits")
    finally:
        client.close()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_catalog_lists_served_models_with_readiness(stack, model_repository: Path) -> None:
    served = latest_manifest(model_repository / MODEL)
    key = create_api_key(stack, ["models"], name="catalog")
    with stack.client(key) as client:
        models = {m["name"]: m for m in client.get("/v1/models").json()["data"]}
        one = client.get(f"/v1/models/{MODEL}").json()
        missing = client.get("/v1/models/not_a_model")
    assert models[MODEL] == one
    assert (one["version"], one["sha256"], one["ready"]) == (served["version"], served["sha256"], True)
    assert one["inputs"][0]["name"] == "image" and one["outputs"][0]["name"] == "logits"
    assert missing.status_code == 404 and missing.json()["type"].endswith("/model-not-found")


def test_json_and_npy_inference_equal_triton_direct(stack, triton) -> None:
    x = patch()
    expected = direct(triton, x)
    with stack.client() as client:
        as_npy = client.post(f"/v1/models/{MODEL}/infer", content=npy(x), headers={"Content-Type": NPY})
        assert as_npy.status_code == 200, as_npy.text
        assert as_npy.headers["x-model-name"] == MODEL and len(as_npy.headers["x-model-sha256"]) == 64
        np.testing.assert_array_equal(np.load(io.BytesIO(as_npy.content)), expected)

        small = x[:, :, :2, :3, :4]
        body = {"inputs": [{"name": "image", "shape": list(small.shape), "datatype": "FP32",
                            "data": small.ravel().tolist()}], "outputs": ["logits"]}
        as_json = client.post(f"/v1/models/{MODEL}/infer", json=body)
        assert as_json.status_code == 200, as_json.text
        answer = as_json.json()
        out = answer["outputs"][0]
        assert (answer["model_name"], out["name"], out["shape"], out["datatype"]) == (
            MODEL, "logits", [1, 5, 2, 3, 4], "FP32")
        np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(out["shape"]), direct(triton, small))


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        ({"inputs": [{"name": "img", "shape": [1, 1, 2, 2, 2], "data": [0] * 8}]}, None, 422, "takes inputs"),
        ({"inputs": [{"name": "image", "shape": [1, 1, 2, 2, 2], "data": [0] * 7}]}, None, 422, "needs 8 values"),
        ({"inputs": [{"name": "image", "shape": [1, 2, 2, 2], "data": [0] * 8}]}, None, 422, "does not fit"),
        ({"inputs": [{"name": "image", "shape": [1, 1, 2, 2, 2], "datatype": "INT32", "data": [0] * 8}]}, None,
         422, "dtype"),
        ({"inputs": [{"name": "image", "shape": [1, 1, 2, 2, 2], "data": [0] * 8}], "outputs": ["probs"]}, None,
         422, "no output"),
        ({"inputs": [{"name": "image", "shape": [5, 1, 2, 2, 2], "data": [0] * 40}]}, None, 422, "batch"),
        ({"inputs": []}, None, 422, "inputs"),
        ({"nothing": 1}, None, 422, "inputs"),
        (b"\x93NUMPY garbage", NPY, 422, ".npy"),
        (b"hello", "text/plain", 415, "application/json"),
    ],
    ids=["name", "count", "rank", "dtype", "output", "batch-over-max", "no-inputs", "extra-field", "bad-npy",
         "text"],
)
def test_bad_inference_requests(stack, body, content_type, status, needle) -> None:
    with stack.client() as client:
        if content_type is None:
            response = client.post(f"/v1/models/{MODEL}/infer", json=body)
        else:
            response = client.post(f"/v1/models/{MODEL}/infer", content=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.text


def test_object_arrays_are_never_unpickled(stack) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with stack.client() as client:
        response = client.post(f"/v1/models/{MODEL}/infer", content=buffer.getvalue(), headers={"Content-Type": NPY})
    assert response.status_code == 422


def test_gateway_stays_up_while_triton_is_down_and_recovers(stack, model_repository: Path, run_dir: Path) -> None:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    gateway, url = start_gateway(stack.settings, stack.env, "gateway-no-triton", extra_env={
        "MEDSTACK_TRITON_HTTP_PORT": str(ports["http"]), "MEDSTACK_TRITON_GRPC_PORT": str(ports["grpc"]),
        "MEDSTACK_TRITON_WAIT_S": "0", "MEDSTACK_TRITON_RETRIES": "1"})
    server = None
    try:
        with httpx.Client(base_url=url, headers={"X-API-Key": BOOTSTRAP_KEY}, timeout=30) as client:
            body = npy(patch((1, 1, 4, 4, 4)))
            down = client.post(f"/v1/models/{MODEL}/infer", content=body, headers={"Content-Type": NPY})
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"].isdigit()
            assert down.json()["type"].endswith("/triton-unavailable")
            assert client.get("/livez").status_code == 200
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["triton"] is False
            assert "retry-after" in ready.headers
            catalog = client.get("/v1/models").json()["data"]
            assert catalog and all(m["ready"] is None for m in catalog)

            runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
            server = TritonServer(runtime, model_repository, http_port=ports["http"], grpc_port=ports["grpc"],
                                  metrics_port=ports["metrics"], log_file=run_dir / f"triton-back-{os.getpid()}.log")
            server.start()
            server.wait_ready(timeout_s=120)
            deadline = time.monotonic() + 20
            while True:  # the gateway's channel reconnects on its own (backoff ≤ 2 s)
                back = client.post(f"/v1/models/{MODEL}/infer", content=body, headers={"Content-Type": NPY})
                if back.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert back.status_code == 200, back.text
            assert client.get("/readyz").status_code == 200
    finally:
        if server is not None:
            server.stop()
        stop_process_group(gateway.pid)


def test_non_finite_inputs_are_refused(stack) -> None:
    x = np.zeros((1, 1, 2, 2, 2), np.float32)
    x[0, 0, 0, 0, 0] = np.nan
    with stack.client() as client:
        response = client.post(f"/v1/models/{MODEL}/infer", content=npy(x), headers={"Content-Type": NPY})
    assert response.status_code == 422 and "NaN" in response.json()["detail"]

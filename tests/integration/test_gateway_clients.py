"""The Python client and the direct-to-Triton gRPC example, against the real stack."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from core.settings import REPO_ROOT
from tests.conftest import create_api_key, write_small_ct

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"


def load(relative: str) -> ModuleType:
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def client_module() -> ModuleType:
    return load("clients/python/medstack_client.py")


def test_python_client_end_to_end(stack, triton, client_module, tmp_path: Path) -> None:
    key = create_api_key(stack, ["segmentation", "jobs", "models"], name="python-client")
    ct = write_small_ct(tmp_path / "ct.nii.gz", shape=(12, 24, 24), seed=11)
    with client_module.MedStackClient(stack.gateway_url, key) as ms:
        assert ms.ready()
        assert MODEL in {m["name"] for m in ms.models()}
        job = ms.segment(ct, model=MODEL, idempotency_key="client-1")
        assert ms.segment(ct, model=MODEL, idempotency_key="client-1")["id"] == job["id"]
        done = ms.wait(job["id"], timeout_s=120, poll_s=0.2)
        assert done["state"] == "succeeded"
        names = {a["name"] for a in ms.artifacts(job["id"])}
        mask = ms.download(job["id"], "mask.nii.gz", tmp_path / "out")
        assert "mask.nii.gz" in names and mask.stat().st_size > 0
        assert ms.jobs(state="succeeded")[0]["id"] == job["id"]

        patch = np.random.default_rng(0).uniform(-1000, 1000, (1, 1, 4, 8, 8)).astype(np.float32)
        logits = ms.infer(MODEL, patch)
        assert logits.shape == (1, 5, 4, 8, 8)
        np.testing.assert_allclose(ms.infer_json(MODEL, {"image": patch})["logits"], logits, rtol=1e-6)

        with pytest.raises(client_module.MedStackError) as excinfo:
            ms.job("no-such-job")
        assert excinfo.value.status == 404 and excinfo.value.kind == "job-not-found"
        with pytest.raises(client_module.MedStackError) as excinfo:
            ms.cancel(job["id"])
        assert excinfo.value.status == 409


def test_grpc_example_calls_triton_directly_with_the_gateway_tensor_names(stack, triton) -> None:
    example = load("clients/grpc/triton_direct.py")
    key = create_api_key(stack, ["models"], name="grpc-example")
    report = example.call(stack.gateway_url, key, triton.grpc_url, MODEL, size=(8, 16, 16))
    with stack.client(key) as client:
        card = client.get(f"/v1/models/{MODEL}").json()
    assert report["version"] == str(card["version"]) and report["sha256"] == card["sha256"]
    assert report["inputs"] == {"image": [1, 1, 8, 16, 16]} and report["outputs"] == {"logits": [1, 5, 8, 16, 16]}
    logits = report["arrays"]["logits"]
    assert np.isfinite(logits).all() and logits.size == 5 * 8 * 16 * 16
    # the CLI form prints the same report as JSON
    assert example.main(["--gateway", stack.gateway_url, "--key", key, "--triton", triton.grpc_url,
                         "--model", MODEL, "--size", "4", "8", "8"]) == 0

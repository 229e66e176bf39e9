"""Capabilities whose model or worker task is not built answer 503 naming what is missing (checked on a
gateway whose model repository is empty, so it holds whatever this checkout has built); valuation
(whose worker task exists) takes jobs."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from core.triton import stop_process_group
from tests.conftest import create_api_key, start_gateway

pytestmark = pytest.mark.integration

MISSING = [
    ("POST", "/v1/reports", "report", "report_generate", "model-missing"),
    ("POST", "/v1/dialogue/sessions", "dialogue", "dialogue_generate", "model-missing"),
    ("GET", "/v1/dialogue/sessions/abc", "dialogue", "dialogue_generate", "model-missing"),
    ("POST", "/v1/dialogue/sessions/abc/messages", "dialogue", "dialogue_generate", "model-missing"),
    ("POST", "/v1/localization/templates", "localization", "localization_medlam", "model-missing"),
    ("POST", "/v1/localization/jobs", "localization", "localization_medlam", "model-missing"),
    ("POST", "/v1/medlsam/jobs", "segmentation", "localization_medlam", "model-missing"),
    ("POST", "/v1/umcam/jobs", "segmentation", "umcam_unet", "model-missing"),
    ("POST", "/v1/umcam/pseudo-labels", "segmentation", "umcam_cam", "model-missing"),
    ("POST", "/v1/hermes/jobs", "segmentation", "hermes_r", "model-missing"),
]


@pytest.fixture(scope="module")
def bare_gateway(stack, tmp_path_factory):
    """A second gateway on the same database, seeing an empty model repository."""
    empty = tmp_path_factory.mktemp("empty_model_repository")
    proc, url = start_gateway(stack.settings, stack.env, "bare-gateway", {"MEDSTACK_MODEL_REPOSITORY": str(empty)})
    yield url
    stop_process_group(proc.pid)


@pytest.mark.parametrize(("method", "path", "scope", "names", "kind"), MISSING,
                         ids=[f"{m} {p}" for m, p, *_ in MISSING])
def test_unbuilt_capabilities_are_503_naming_the_missing_piece(stack, bare_gateway, method, path, scope, names,
                                                                kind) -> None:
    key = create_api_key(stack, [scope], name=f"cap-{scope}")
    with stack.client(key) as client:
        client.base_url = bare_gateway
        # answered before the body is read: a client learns at once, whatever it sent
        response = client.request(method, path, files={"file": ("x.bin", b"payload")})
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["type"].endswith("/" + kind) and names in problem["detail"]
    if kind == "model-missing":
        assert problem["model"] == names


def test_templates_can_be_listed_without_the_model(stack) -> None:
    key = create_api_key(stack, ["localization"], name="templates")
    with stack.client(key) as client:
        assert client.get("/v1/localization/templates").json() == {"data": []}
        missing = client.get("/v1/localization/templates/nope")
        assert missing.status_code == 404 and missing.json()["type"].endswith("/template-not-found")
        assert client.delete("/v1/localization/templates/nope").status_code == 404


def _npz() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=rng.normal(size=(40, 1, 8, 8)).astype(np.float32),
                        y=rng.integers(0, 2, 40).astype(np.int64))
    return buffer.getvalue()


def test_valuation_job_intake(stack) -> None:
    key = create_api_key(stack, ["valuation", "jobs"], name="valuation")
    with stack.client(key) as client:
        response = client.post("/v1/valuation/jobs", files={"file": ("set.npz", _npz())},
                               data={"epochs": "1", "seeds": "1", "method": "gradnorm", "priority": "2"},
                               headers={"Idempotency-Key": "val-1"})
        assert response.status_code == 202, response.text
        job = response.json()
        client.delete(f"/v1/jobs/{job['id']}")  # the worker side is the valuation tests' business
        assert (job["kind"], job["model"], job["priority"]) == ("valuation", "small_cnn", 2)
        folder = stack.settings.artifact_dir / "jobs" / job["id"]
        assert zipfile.ZipFile(folder / "input.npz").namelist() == ["x.npy", "y.npy"]

        # a multipart body without a file part: plain fields as (None, value)
        builtin = client.post("/v1/valuation/jobs", files={"dataset": (None, "digits"), "epochs": (None, "1")})
        assert builtin.status_code == 202, builtin.text
        client.delete(f"/v1/jobs/{builtin.json()['id']}")

        for fields, files, status in (({"epochs": "0"}, {"file": ("set.npz", _npz())}, 422),
                                      ({"dataset": "digits"}, {"file": ("set.npz", _npz())}, 422),
                                      ({"model_family": "vgg"}, {"file": ("set.npz", _npz())}, 422),
                                      ({}, {"file": ("set.csv", b"a,b\n1,2\n")}, 415)):
            refused = client.post("/v1/valuation/jobs", files=files, data=fields)
            assert refused.status_code == status, (fields, refused.text)

"""Auth against the real gateway: 401 vs 403, key headers, revocation, the CLI, and the shared rate limit."""

from __future__ import annotations

import re
import subprocess
import time

import httpx
import pytest

from core.triton import stop_process_group
from tests.conftest import BOOTSTRAP_KEY, create_api_key, start_gateway

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"


def _operations(client: httpx.Client) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return [(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
            for path, item in spec["paths"].items() for method in item if path not in ("/livez", "/readyz")]


def test_probes_answer_without_a_key(stack) -> None:
    with httpx.Client(base_url=stack.gateway_url) as anonymous:
        assert anonymous.get("/livez").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {
            "triton": True, "broker": True, "database": True, "models": True}


def test_every_other_route_refuses_a_request_without_a_key(stack) -> None:
    with httpx.Client(base_url=stack.gateway_url) as anonymous:
        operations = _operations(anonymous)
        assert len(operations) >= 20
        for method, path in operations:
            response = anonymous.request(method, path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["type"].endswith("/unauthorized")


def test_unknown_key_is_401_and_missing_scope_is_403(stack) -> None:
    jobs_only = create_api_key(stack, ["jobs"], name="jobs-only")
    with httpx.Client(base_url=stack.gateway_url) as client:
        unknown = client.get("/v1/jobs", headers={"Authorization": "Bearer msk_not-a-key"})
        assert unknown.status_code == 401 and unknown.json()["type"].endswith("/invalid-key")
        assert 'error="invalid_token"' in unknown.headers["www-authenticate"]
        basic = client.get("/v1/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401
        # both header forms carry a key
        assert client.get("/v1/jobs", headers={"X-API-Key": jobs_only}).status_code == 200
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {jobs_only}"}).status_code == 200
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/segmentation/jobs"), ("GET", "/metrics"),
                             ("GET", "/v1/admin/keys"), ("POST", "/v1/reports"), ("POST", "/v1/valuation/jobs")):
            forbidden = client.request(method, path, headers={"X-API-Key": jobs_only})
            assert forbidden.status_code == 403, (method, path, forbidden.text)
            assert forbidden.json()["type"].endswith("/forbidden") and "required_scope" in forbidden.json()


def test_admin_scope_covers_everything_and_keys_are_never_listed(stack) -> None:
    admin = create_api_key(stack, ["admin"], name="second-admin")
    with stack.client(admin) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/metrics").status_code == 200
        listed = client.get("/v1/admin/keys").text
    assert admin not in listed and BOOTSTRAP_KEY not in listed


def test_revoked_key_is_refused_and_bootstrap_key_is_managed(stack) -> None:
    key = create_api_key(stack, ["jobs"], name="to-revoke")
    with stack.client() as admin:
        key_id = next(k["id"] for k in admin.get("/v1/admin/keys").json()["data"] if k["name"] == "to-revoke")
        with stack.client(key) as client:
            assert client.get("/v1/jobs").status_code == 200
            revoked = admin.delete(f"/v1/admin/keys/{key_id}")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            assert client.get("/v1/jobs").status_code == 401
        assert admin.delete("/v1/admin/keys/bootstrap").status_code == 409
        assert admin.delete("/v1/admin/keys/nonexistent").status_code == 404
        bad = admin.post("/v1/admin/keys", json={"name": "x", "scopes": ["segmentaton"]})
        assert bad.status_code == 422 and "did you mean 'segmentation'" in bad.json()["detail"]


def test_cli_keys_work_against_the_running_gateway(any_stack) -> None:
    env = {**any_stack.env}

    def medstack(*args: str) -> str:
        done = subprocess.run([".venv/bin/medstack", "keys", *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    created = dict(line.split(":", 1) for line in medstack("create", "--name", "cli", "--scopes", "models")
                   .splitlines())
    key_id, key = created["id"].strip(), created["key"].strip()
    with any_stack.client(key) as client:
        assert client.get("/v1/models").status_code == 200
        assert client.get("/v1/jobs").status_code == 403
        medstack("revoke", key_id)
        # another process revoked it: this gateway notices within MEDSTACK_KEY_CACHE_S (2 s)
        deadline = time.monotonic() + 5
        while client.get("/v1/models").status_code != 401:
            assert time.monotonic() < deadline, "revoked key still accepted"
            time.sleep(0.25)


def test_rate_limit_is_per_key_and_shared_by_gateway_processes(stack) -> None:
    key = create_api_key(stack, ["jobs"], name="slow", rate_per_s=0.5, burst=3)
    other = create_api_key(stack, ["jobs"], name="other", rate_per_s=0.5, burst=3)
    second, second_url = start_gateway(stack.settings, stack.env, "gateway-2")
    try:
        with stack.client(key) as first, httpx.Client(base_url=second_url,
                                                      headers={"X-API-Key": key}) as via_second:
            answers = [first.get("/v1/jobs").status_code, via_second.get("/v1/jobs").status_code,
                       first.get("/v1/jobs").status_code]
            assert answers == [200, 200, 200]
            limited = via_second.get("/v1/jobs")
            assert limited.status_code == 429, limited.text
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["type"].endswith("/rate-limited")
            assert first.get("/v1/jobs").status_code == 429
        with stack.client(other) as unaffected:
            assert unaffected.get("/v1/jobs").status_code == 200
        time.sleep(2.1)  # one token back at 0.5/s
        with stack.client(key) as first:
            assert first.get("/v1/jobs").status_code == 200
    finally:
        stop_process_group(second.pid)

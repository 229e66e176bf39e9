"""Request ids, Prometheus metrics and the JSON log of the real gateway; nothing identifying is logged."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import create_api_key, write_small_ct

pytestmark = pytest.mark.integration


def test_request_ids_are_echoed_or_made(stack) -> None:
    with stack.client() as client:
        assert client.get("/v1/jobs", headers={"X-Request-ID": "ris-7781"}).headers["x-request-id"] == "ris-7781"
        made = client.get("/v1/jobs").headers["x-request-id"]
        replaced = client.get("/v1/jobs", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made) and re.fullmatch(r"[0-9a-f]{32}", replaced)
        problem = client.get("/v1/jobs/unknown", headers={"X-Request-ID": "req-404"})
        assert problem.status_code == 404 and problem.headers["x-request-id"] == "req-404"


def test_metrics_count_requests_jobs_and_triton_round_trips(stack, tmp_path: Path) -> None:
    with stack.client() as client:
        x = np.zeros((1, 1, 4, 4, 4), np.float32)
        body = {"inputs": [{"name": "image", "shape": list(x.shape), "data": x.ravel().tolist()}]}
        assert client.post("/v1/models/reference_hutissue/infer", json=body).status_code == 200
        client.get("/v1/jobs/does-not-exist")
        ct = write_small_ct(tmp_path / "ct.nii.gz", shape=(8, 16, 16))
        assert client.post("/v1/segmentation/jobs", content=ct.read_bytes(),
                           headers={"Content-Type": "application/octet-stream"}).status_code == 202
    metrics_key = create_api_key(stack, ["metrics"], name="prometheus", rate_per_s=0)
    with stack.client(metrics_key) as prometheus:
        response = prometheus.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'medstack_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}' in text
    assert 'medstack_http_request_duration_seconds_bucket{le="0.1",method="POST",route="/v1/models/{name}/infer"}' \
        in text
    assert re.search(r'medstack_triton_request_duration_seconds_count\{model="reference_hutissue",outcome="ok"\} '
                     r'[1-9]', text)
    jobs = {m.group(1): float(m.group(2)) for m in re.finditer(r'medstack_jobs\{state="(\w+)"\} ([\d.]+)', text)}
    assert sum(jobs.values()) >= 1 and set(jobs) <= {"queued", "running", "succeeded", "failed", "cancelled"}
    # raw paths never become labels
    assert "does-not-exist" not in text


def test_logs_are_json_with_request_ids_and_no_identifying_data(stack, tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "DOE_JOHN_19600101.nii.gz", shape=(8, 16, 16))
    with stack.client() as client:
        with open(ct, "rb") as f:
            response = client.post("/v1/segmentation/jobs", files={"file": (ct.name, f)},
                                   headers={"X-Request-ID": "log-check-1"})
        assert response.status_code == 202
        client.get("/v1/jobs", params={"kind": "PATIENT-SMITH"}, headers={"X-Request-ID": "log-check-2"})
    time.sleep(0.3)
    log = (stack.settings.run_dir / "gateway.log").read_text()
    assert "DOE_JOHN" not in log and "PATIENT-SMITH" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("request_id") in ("log-check-1", "log-check-2")]
    assert {(line["route"], line["status"]) for line in mine if line["logger"] == "gateway.access"} == {
        ("/v1/segmentation/jobs", 202), ("/v1/jobs", 200)}
    assert all({"ts", "level", "logger", "msg", "request_id"} <= set(line) for line in lines)
    job = response.json()
    with stack.client() as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["request_id"] == "log-check-1"

"""Valuation jobs through the real Celery worker: a small job end to end, and a worker killed mid-job.

The job row is created directly in the database and the task sent by name, as the gateway's
`POST /v1/valuation/jobs` does (the route itself is tested with the gateway).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from core.artifacts import ArtifactStore
from core.capabilities import VALUATION
from core.db import Job, JobState, session_factory
from medstack.stack import _spawn, _wait, worker_command
from services.valuation.data import load_npz, organ_patches, save_npz
from services.valuation.job import OUTPUTS, ValuationParams, run_valuation
from tests.conftest import create_api_key

pytestmark = pytest.mark.integration
TASK = VALUATION.task


@pytest.fixture(scope="module")
def tiny_organs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small organ-patch set from the real CT (200 training, 80 held-out patches) as a job input."""
    return save_npz(organ_patches(per_class_train=20, per_class_test=8), tmp_path_factory.mktemp("in") / "in.npz")


def _celery(redis_url: str):
    from workers.celery_app import celery_app

    celery_app.conf.broker_url = redis_url
    return celery_app


def _create_job(stack, source: Path, params: dict) -> str:
    sessions = session_factory(stack.settings.sqlalchemy_url)
    with sessions.begin() as db:
        job = Job(kind="valuation", model="valuation", input_sha256=hashlib.sha256(source.read_bytes()).hexdigest(),
                  params={"input": "input.npz", **params})
        db.add(job)
        db.flush()
        job_id = job.id
    ArtifactStore(stack.settings.artifact_dir).path(job_id, "input.npz").write_bytes(source.read_bytes())
    return job_id


def _job(stack, job_id: str) -> Job:
    with session_factory(stack.settings.sqlalchemy_url).begin() as db:
        return db.get(Job, job_id)


def _wait_final(stack, job_id: str, timeout_s: float = 600) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = _job(stack, job_id)
        if job.state in JobState.FINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not final after {timeout_s} s: {job.state} {job.stage} {job.progress}")


def test_small_valuation_job_through_the_worker(stack, tiny_organs: Path) -> None:
    params = {"task": "classification", "model_family": "small_cnn", "epochs": 2, "seed": 0, "method": "both",
              "width": 4, "batch_size": 16}
    job_id = _create_job(stack, tiny_organs, params)
    _celery(stack.redis_url).send_task(TASK, args=[job_id])  # routed to the batch queue
    job = _wait_final(stack, job_id)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.progress == 1.0 and job.attempts == 1
    folder = stack.settings.artifact_dir / "jobs" / job_id
    listed = ArtifactStore(stack.settings.artifact_dir).list(job_id)
    assert set(OUTPUTS) <= set(listed) and not (folder / "work").exists()
    result = job.result
    assert result["seeds"] == [0, 1, 2] and result["dataset"]["train"] == 200
    assert set(result["accuracy"]) == {"full", "online_data_si", "online_gradnorm", "coreset", "random_subset"}
    rows = list(csv.DictReader((folder / "values.csv").open()))
    assert len(rows) == 200 and len({r["id"] for r in rows}) == 200
    assert all(r["id"].split("_z")[0] == r["label"] for r in rows)  # ids name the organ the patch shows
    report = json.loads((folder / "report.json").read_text())
    assert len(report["runs"]["full"]["accuracy"]["per_seed"]) == 3
    assert report["runs"]["full"]["accuracy"]["mean"] > 0.2  # 10 balanced classes: above chance after 2 epochs
    coreset = json.loads((folder / "coreset.json").read_text())
    assert 0 < coreset["size"] <= 60

    # a redelivery of the finished job changes nothing
    before = (folder / "values.csv").read_bytes()
    _celery(stack.redis_url).send_task(TASK, args=[job_id])
    time.sleep(3)
    again = _job(stack, job_id)
    assert again.attempts == 1 and again.state == JobState.SUCCEEDED
    assert (folder / "values.csv").read_bytes() == before


def test_organ_patch_job_through_gateway_and_worker(stack, tiny_organs: Path) -> None:
    """POST /v1/valuation/jobs with the organ-patch file → the worker → value table, coreset, report."""
    key = create_api_key(stack, ["valuation", "jobs"], name="valuation-e2e")
    with stack.client(key) as client:
        response = client.post("/v1/valuation/jobs", files={"file": ("organs.npz", tiny_organs.read_bytes())},
                               data={"epochs": "2", "seed": "0", "model_family": "small_cnn"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 600
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
        assert job["state"] == "succeeded", job
        assert set(OUTPUTS) <= set(job["links"])
        report = client.get(job["links"]["report.json"]).json()
        table = client.get(job["links"]["values.csv"]).text.splitlines()
        coreset = client.get(job["links"]["coreset.json"]).json()
    assert report["dataset"]["train"] == 200 and report["seeds"] == [0, 1, 2]
    assert len(table) == 201 and table[0].startswith("id,label,si_block1")
    assert 0 < coreset["size"] <= 60 and job["result"]["coreset_fraction"] <= 0.3


def test_bad_params_fail_the_job_with_a_problem(stack, tiny_organs: Path) -> None:
    job_id = _create_job(stack, tiny_organs, {"model_family": "resnet", "epochs": 2})
    _celery(stack.redis_url).send_task(TASK, args=[job_id])
    job = _wait_final(stack, job_id, timeout_s=120)
    assert job.state == JobState.FAILED
    assert job.error["type"] == "invalid-params" and "resnet18_w" in job.error["detail"]


def _start_worker(stack, name: str, queue: str):
    log = stack.settings.run_dir / f"{name}.log"
    cmd = worker_command(stack.settings, hostname=name)
    cmd[cmd.index("--queues") + 1] = queue
    proc = _spawn(cmd, log, stack.env)
    node = f"{name}@{socket.gethostname()}"
    app = _celery(stack.redis_url)
    _wait(lambda: bool(app.control.ping(destination=[node], timeout=1.0)), name, 120, proc, log)
    return proc, log


def test_a_worker_killed_mid_job_resumes_without_duplicates(stack, tiny_organs: Path, tmp_path: Path) -> None:
    queue = "valuation-crash-test"
    params = {"epochs": 6, "seeds": 1, "seed": 0, "method": "gradnorm", "width": 4}
    job_id = _create_job(stack, tiny_organs, params)
    folder = stack.settings.artifact_dir / "jobs" / job_id
    first, _ = _start_worker(stack, "valuation-crash-1", queue)
    second, log = _start_worker(stack, "valuation-crash-2", queue)  # idle until the job is delivered again
    try:
        _celery(stack.redis_url).send_task(TASK, args=[job_id], queue=queue)
        deadline = time.monotonic() + 300
        while not (folder / "work" / "seed0" / "online_gradnorm" / "epoch_001.npz").exists():
            assert time.monotonic() < deadline, "the job did not reach its second run"
            time.sleep(0.05)
        owner = first if "received" in (stack.settings.run_dir / "valuation-crash-1.log").read_text() else second
        other, log = (second, log) if owner is first else (first, stack.settings.run_dir / "valuation-crash-1.log")
        os.killpg(owner.pid, signal.SIGKILL)  # the worker dies: no warm shutdown, no ack
        owner.wait(timeout=30)
        killed = _job(stack, job_id)
        assert killed.state == JobState.RUNNING and killed.attempts == 1
        assert not (folder / "report.json").exists()

        # Redis hands the unacknowledged message out again only after its visibility timeout
        # (70 min); the test delivers it again at once, to the surviving worker.
        _celery(stack.redis_url).send_task(TASK, args=[job_id], queue=queue)
        job = _wait_final(stack, job_id)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert job.state == JobState.SUCCEEDED, job.error
    assert job.attempts == 2
    assert "gradnorm seed 0: resuming at epoch" in log.read_text()  # went on from its checkpoint

    # one set of results, equal to an uninterrupted run of the same job in this process
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == sorted([*OUTPUTS, "input.npz"])
    reference = run_valuation(load_npz(folder / "input.npz"), tmp_path,
                              ValuationParams.parse({**params, "input": "input.npz"}))
    assert (folder / "values.csv").read_bytes() == (tmp_path / "values.csv").read_bytes()
    assert json.loads((folder / "coreset.json").read_text())["ids"] == json.loads(
        (tmp_path / "coreset.json").read_text())["ids"]
    assert job.result["accuracy"]["online_gradnorm"]["mean"] == reference["runs"]["online_gradnorm"]["accuracy"]["mean"]

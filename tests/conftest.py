"""Session fixtures that start the real services on free ports and stop them afterwards.

Integration tests get a real ``tritonserver`` (embedded, python backend), a private
``redis-server``, a Celery worker process and the gateway under uvicorn — no mocks. Each is
started at most once per test session, and only when a test asks for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from medstack.settings import Settings, settings
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
from medstack.triton import TritonServer, http_ready, prepare_runtime, stop_process_group


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

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway_url, timeout=60)


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

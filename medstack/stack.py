"""The embedded stack on one host: Triton, Redis, a Celery worker and the gateway.

``medstack up`` starts each component as its own process group, records a pid file and a log in
the run folder, and waits until each answers its health check. ``medstack down`` stops only what
a pid file names, so a Redis that was already running is never touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from core.capabilities import queues
from core.run_folder import RunFolder
from core.settings import REPO_ROOT, Settings
from core.triton import TritonServer, http_ready, prepare_runtime, stop_process_group

COMPONENTS = ("triton", "redis", "worker", "gateway")
PACS_COMPONENTS = ("pacs", "listener")  # `medstack up --pacs`: Orthanc and the DICOM listener (docs/pacs.md)
SUPERVISOR = "supervisor"
REDIS_MISSING = (
    "no Redis answers at {url} and redis-server is not installed. Install it "
    "(Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install redis`) "
    "or set MEDSTACK_REDIS_URL to a Redis you run."
)


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, ValueError):
        return False


def component_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """Environment for worker and gateway: the resolved addresses, so all agree."""
    env = dict(os.environ)
    env.update(
        MEDSTACK_REDIS_URL=redis_url,
        MEDSTACK_TRITON_HOST=settings.triton_host,
        MEDSTACK_TRITON_HTTP_PORT=str(settings.triton_http_port),
        MEDSTACK_TRITON_GRPC_PORT=str(settings.triton_grpc_port),
        MEDSTACK_TRITON_METRICS_PORT=str(settings.triton_metrics_port),
        MEDSTACK_RUN_DIR=str(settings.run_dir),
        MEDSTACK_ARTIFACT_DIR=str(settings.artifact_dir),
        MEDSTACK_MODEL_REPOSITORY=str(settings.model_repository),
        MEDSTACK_DATABASE_URL=settings.sqlalchemy_url,
        MEDSTACK_GATEWAY_PORT=str(settings.gateway_port),
        PYTHONPATH=str(REPO_ROOT),
    )
    return env


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT, start_new_session=True
        )


def _wait(check: Callable[[], bool], what: str, timeout_s: float, proc: subprocess.Popen[bytes] | None,
          log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode}; see {log}")
        time.sleep(0.3)
    raise StackError(f"{what} not healthy after {timeout_s:.0f} s; see {log}")


def worker_command(settings: Settings, hostname: str = "medstack-worker") -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
        "--queues", ",".join(queues()), "--concurrency", "1", "--loglevel", "INFO",
        "--hostname", f"{hostname}@%h", "--without-gossip", "--without-mingle",
    ]


def gateway_command(settings: Settings) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "gateway.main:app",
        "--host", settings.gateway_host, "--port", str(settings.gateway_port), "--no-access-log",
    ]


def worker_alive(redis_url: str, timeout_s: float = 2.0) -> bool:
    from workers.celery_app import celery_app

    celery_app.conf.broker_url = redis_url
    try:
        return bool(celery_app.control.ping(timeout=timeout_s))
    except Exception:  # broker unreachable counts as not alive
        return False


class Stack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run = RunFolder(settings.run_dir)

    # ---- up -------------------------------------------------------------------------------
    def up(self, echo: Callable[[str], None] = lambda _: None, pacs: bool = False) -> dict[str, str]:
        """Start what is not running, then a supervisor that restarts components that die; with ``pacs``
        also Orthanc and the DICOM listener (remembered: the supervisor keeps them running too)."""
        if pacs:
            self.run.prepare()
            self.run.save_state(self.run.load_state() | {"pacs": "1"})
        state = self.ensure_running(echo)
        if not self.run.pid(SUPERVISOR):
            log = self.run.log_file(SUPERVISOR)
            env = component_env(self.settings, state["redis_url"])
            proc = _spawn([sys.executable, "-m", "medstack.supervisor"], log, env)
            self.run.pid_file(SUPERVISOR).write_text(str(proc.pid))
            echo(f"{SUPERVISOR}: up (pid {proc.pid}, restarts components that die; log {log})")
        return state

    def ensure_running(self, echo: Callable[[str], None] = lambda _: None) -> dict[str, str]:
        self.run.prepare()
        self.settings.artifact_dir.mkdir(parents=True, exist_ok=True)
        state = self.run.load_state()
        redis_url = self._start_redis(state, echo)
        state["redis_url"] = redis_url
        self.run.save_state(state)
        self._start_triton(echo)
        env = component_env(self.settings, redis_url)
        if state.get("pacs") == "1":
            from medstack.pacs_stack import start_pacs

            env |= start_pacs(self, echo)
        self._start(
            "worker", worker_command(self.settings), env,
            lambda: worker_alive(redis_url), echo, timeout_s=90,
        )
        gateway_url = f"http://{self.settings.gateway_host}:{self.settings.gateway_port}"
        self._start("gateway", gateway_command(self.settings), env,
                    lambda: http_ready(gateway_url + "/livez"), echo, timeout_s=60)
        if state.get("pacs") == "1":
            from medstack.pacs_stack import start_listener

            start_listener(self, env, echo)
        state["gateway_url"] = gateway_url
        self.run.save_state(state)
        return state

    def _start(self, name: str, cmd: list[str], env: dict[str, str], healthy: Callable[[], bool],
               echo: Callable[[str], None], timeout_s: float) -> None:
        if self.run.pid(name):
            echo(f"{name}: already running (pid {self.run.pid(name)})")
            return
        log = self.run.log_file(name)
        proc = _spawn(cmd, log, env)
        self.run.pid_file(name).write_text(str(proc.pid))
        _wait(healthy, name, timeout_s, proc, log)
        echo(f"{name}: up (pid {proc.pid}, log {log})")

    def _start_redis(self, state: dict[str, str], echo: Callable[[str], None]) -> str:
        configured = os.environ.get("MEDSTACK_REDIS_URL") or os.environ.get("REDIS_URL")
        if configured and redis_answers(configured):
            echo(f"redis: using {configured}")
            return configured
        if configured:
            echo(f"redis: {configured} does not answer; starting a private redis-server")
        previous = state.get("redis_url") if state.get("redis_private") else None
        if self.run.pid("redis") and previous and redis_answers(previous):
            echo(f"redis: already running at {previous}")
            return previous
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(REDIS_MISSING.format(url=configured or "(none configured)"))
        # a restarted private Redis keeps its port, so worker and gateway find it again
        port = int(previous.rsplit(":", 1)[1].split("/")[0]) if previous else free_port()
        data = self.settings.run_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        # AOF: jobs accepted before a Redis restart are still queued after it
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
               "--appendonly", "yes", "--save", ""]
        log = self.run.log_file("redis")
        proc = _spawn(cmd, log, dict(os.environ))
        self.run.pid_file("redis").write_text(str(proc.pid))
        url = f"redis://127.0.0.1:{port}/0"
        _wait(lambda: redis_answers(url), "redis", 20, proc, log)
        echo(f"redis: private redis-server at {url} (pid {proc.pid})")
        state["redis_private"] = "1"
        return url

    def _start_triton(self, echo: Callable[[str], None]) -> None:
        s = self.settings
        ready_url = f"http://{s.triton_host}:{s.triton_http_port}/v2/health/ready"
        if self.run.pid("triton"):
            echo(f"triton: already running (pid {self.run.pid('triton')})")
            return
        if not any(s.model_repository.glob("*/config.pbtxt")):
            raise StackError(f"the model repository {s.model_repository} is empty; run `medstack export` first")
        runtime = prepare_runtime(s.run_dir / "triton", s.triton_env)
        server = TritonServer(
            runtime, s.model_repository, s.triton_http_port, s.triton_grpc_port, s.triton_metrics_port,
            host=s.triton_host, config_name=s.triton_config_name, model_control=s.triton_model_control,
            load_models=("*",) if s.triton_model_control == "explicit" else (),
            log_file=self.run.log_file("triton"),
        )
        server.start()
        assert server.process is not None
        self.run.pid_file("triton").write_text(str(server.process.pid))
        _wait(lambda: http_ready(ready_url), "triton", s.triton_timeout_s, server.process, self.run.log_file("triton"))
        echo(f"triton: up (pid {server.process.pid}, HTTP {s.triton_http_port}, gRPC {s.triton_grpc_port})")

    # ---- down / status ----------------------------------------------------------------------
    def down(self, echo: Callable[[str], None] = lambda _: None) -> None:
        # the supervisor first: it would restart the rest
        for name in (SUPERVISOR, *reversed(PACS_COMPONENTS), *reversed(COMPONENTS)):
            pid = self.run.pid(name)
            pid_file = self.run.pid_file(name)
            if pid is not None:
                stop_process_group(pid, timeout_s=30)
                echo(f"{name}: stopped (pid {pid})")
            pid_file.unlink(missing_ok=True)
        self.run.state_file.unlink(missing_ok=True)

    def status(self) -> dict[str, str]:
        s = self.settings
        state = self.run.load_state()
        redis_url = state.get("redis_url", "")
        checks: dict[str, Callable[[], bool]] = {
            "triton": lambda: http_ready(f"http://{s.triton_host}:{s.triton_http_port}/v2/health/ready"),
            "redis": lambda: bool(redis_url) and redis_answers(redis_url),
            "worker": lambda: bool(redis_url) and worker_alive(redis_url, timeout_s=1.0),
            "gateway": lambda: http_ready(f"http://{s.gateway_host}:{s.gateway_port}/readyz"),
        }
        report = {}
        for name in COMPONENTS:
            pid = self.run.pid(name)
            owner = f"pid {pid}" if pid else ("external" if name == "redis" and redis_url else "not started")
            report[name] = f"{'healthy' if checks[name]() else 'DOWN'} ({owner})"
        if state.get("pacs") == "1":
            from medstack.pacs_stack import pacs_status

            report |= pacs_status(self)
        pid = self.run.pid(SUPERVISOR)
        report[SUPERVISOR] = f"watching (pid {pid})" if pid else "not running: nothing restarts a dead component"
        return report

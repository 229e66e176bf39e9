"""Embedded NVIDIA Triton Inference Server from the ``nvidia-pytriton`` wheel.

The wheel ships the real ``tritonserver`` binary (Triton 2.51), the python backend and a backend
stub per Python version. We lay these out in a runtime folder the way Triton expects, point the
stub at the Triton environment (a separate venv with numpy < 2: with numpy 2 the stub returns
empty output tensors without logging an error) and supervise the process.

    runtime = prepare_runtime(settings.run_dir / "triton", settings.triton_env)
    with TritonServer(runtime, model_repository=..., http_port=8000, ...) as server:
        server.wait_ready()
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from core.settings import settings

log = logging.getLogger(__name__)

STUB_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonError(RuntimeError):
    """Triton could not be prepared, started or reached."""


@dataclass(frozen=True)
class TritonRuntime:
    """A runtime folder with ``bin/tritonserver`` and ``backends/``, plus the environment to run it."""

    root: Path
    libs_dir: Path
    site_packages: Path

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def backends(self) -> Path:
        return self.root / "backends"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(self.libs_dir), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # The stub imports numpy and onnxruntime from here, never from the caller's venv.
        env["PYTHONPATH"] = str(self.site_packages)
        env.pop("PYTHONHOME", None)
        if settings.force_fp32:  # also when set in .env, which the stub never reads
            env["MEDSTACK_FORCE_FP32"] = "1"
        return env


def _site_packages(venv: Path) -> Path:
    candidates = sorted(venv.glob(f"lib/python{STUB_PYTHON}/site-packages"))
    if not candidates:
        raise TritonError(
            f"no Python {STUB_PYTHON} site-packages under {venv}; create the Triton environment with "
            "`make envs` (it installs nvidia-pytriton==0.7.0 and numpy<2 there)"
        )
    return candidates[0]


def prepare_runtime(runtime_dir: Path, triton_env: Path) -> TritonRuntime:
    """Copy the server, backends and the matching python-backend stub into ``runtime_dir``.

    Idempotent: an existing, complete runtime folder is reused.
    """
    site = _site_packages(triton_env)
    wheel_root = site / "pytriton" / "tritonserver"
    libs = site / "nvidia_pytriton.libs"
    if not (wheel_root / "bin" / "tritonserver").exists():
        raise TritonError(f"tritonserver binary not found in {wheel_root}; reinstall nvidia-pytriton==0.7.0")
    stub = wheel_root / "python_backend_stubs" / STUB_PYTHON / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"nvidia-pytriton ships no python-backend stub for Python {STUB_PYTHON}")

    runtime = TritonRuntime(root=runtime_dir, libs_dir=libs, site_packages=site)
    if runtime.binary.exists() and (runtime.backends / "python" / stub.name).exists():
        return runtime
    runtime_dir.mkdir(parents=True, exist_ok=True)
    for part in ("bin", "backends", "caches"):
        shutil.copytree(wheel_root / part, runtime_dir / part, dirs_exist_ok=True)
    shutil.copy2(stub, runtime.backends / "python" / stub.name)
    return runtime


@dataclass
class TritonServer:
    """One ``tritonserver`` process. Use as a context manager or call start/stop."""

    runtime: TritonRuntime
    model_repository: Path
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    config_name: str = "embedded"
    model_control: str = "none"
    load_models: tuple[str, ...] = ()
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def command(self) -> list[str]:
        cmd = [
            str(self.runtime.binary),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.runtime.backends}",
            f"--cache-directory={self.runtime.root / 'caches'}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--model-control-mode={self.model_control}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=false",
            "--strict-readiness=true",
        ]
        if self.config_name:
            cmd.append(f"--model-config-name={self.config_name}")
        if self.model_control == "explicit":
            cmd += [f"--load-model={name}" for name in self.load_models]
        return cmd

    def start(self) -> None:
        if self.process is not None:
            raise TritonError("this TritonServer is already started")
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(), env=self.runtime.env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches the stubs too
        )

    def is_ready(self) -> bool:
        return http_ready(f"http://{self.host}:{self.http_port}/v2/health/ready")

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self.process.returncode}; see {self.log_file}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise TritonError(f"tritonserver not ready after {timeout_s:.0f} s; see {self.log_file}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
            return
        stop_process_group(self.process.pid, timeout_s)
        self.process.wait()
        self.process = None

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_ready(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop_process_group(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL what is left after ``timeout_s``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        # reap our own child if it is one, so it does not linger as a zombie
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""`medstack up | status | down` as a user runs them: everything healthy, then nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from medstack.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _medstack(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([".venv/bin/medstack", *args], env=env, capture_output=True, text=True, timeout=300)


def test_up_status_down_leaves_no_process(model_repository: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)
    env.pop("MEDSTACK_REDIS_URL", None)  # no Redis configured: the stack starts its own
    env.update(
        MEDSTACK_RUN_DIR=str(tmp_path / "run"), MEDSTACK_ARTIFACT_DIR=str(tmp_path / "run" / "artifacts"),
        MEDSTACK_TRITON_HTTP_PORT=str(free_port()), MEDSTACK_TRITON_GRPC_PORT=str(free_port()),
        MEDSTACK_TRITON_METRICS_PORT=str(free_port()), MEDSTACK_GATEWAY_PORT=str(free_port()),
    )
    up = _medstack(["up"], env)
    pid_dir = tmp_path / "run" / "pids"
    pids = [int(p.read_text()) for p in pid_dir.glob("*.pid")]
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "private redis-server" in up.stdout
        assert len(pids) == 5  # four components and the supervisor
        status = _medstack(["status"], env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("healthy") == 4 and "watching" in status.stdout
        # idempotent: a second `up` starts nothing new
        again = _medstack(["up"], env)
        assert again.returncode == 0 and again.stdout.count("already running") == 4, again.stdout

        # the supervisor restarts a component that dies
        worker = int((pid_dir / "worker.pid").read_text())
        os.killpg(worker, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = (pid_dir / "worker.pid").read_text()
            if int(now) != worker and _medstack(["status"], env).returncode == 0:
                break
            time.sleep(2)
        else:
            raise AssertionError("the worker was not restarted")
        pids.append(int((pid_dir / "worker.pid").read_text()))
    finally:
        down = _medstack(["down"], env)
    assert down.returncode == 0
    children = [c for pid in pids if psutil.pid_exists(pid) for c in [psutil.Process(pid)]
                if c.status() != psutil.STATUS_ZOMBIE]
    assert not children, f"left running: {children}"
    stubs = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert not stubs, f"left running: {stubs}"
    assert _medstack(["status"], env).returncode == 1

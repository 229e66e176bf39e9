"""`medstack up --pacs` as a user runs it: Orthanc and the DICOM listener come up with the stack, know
each other, are restarted by the supervisor, and `medstack down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from medstack.pacs import MISSING, USER, orthanc_binary
from medstack.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _medstack(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([".venv/bin/medstack", *args], env=env, capture_output=True, text=True, timeout=300)


def test_up_with_pacs_runs_orthanc_and_the_listener_under_the_supervisor(model_repository: Path,
                                                                         tmp_path: Path) -> None:
    if orthanc_binary() is None:
        pytest.skip(f"{MISSING}; the PACS tests need it")
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MEDSTACK_REDIS_URL")}
    env.update(
        MEDSTACK_RUN_DIR=str(run), MEDSTACK_ARTIFACT_DIR=str(run / "artifacts"),
        MEDSTACK_TRITON_HTTP_PORT=str(free_port()), MEDSTACK_TRITON_GRPC_PORT=str(free_port()),
        MEDSTACK_TRITON_METRICS_PORT=str(free_port()), MEDSTACK_GATEWAY_PORT=str(free_port()),
        MEDSTACK_LISTENER_PORT=str(free_port()),
    )
    up = _medstack(["up", "--pacs"], env)
    pids = [int(p.read_text()) for p in (run / "pids").glob("*.pid")]
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(pids) == 7  # four components, Orthanc, the listener and the supervisor
        status = _medstack(["status"], env)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("healthy") == 6, status.stdout

        # Orthanc knows the listener as a modality, and the listener lets Orthanc's AE in
        config = json.loads((run / "pacs" / "pacs.json").read_text())
        orthanc = httpx.Client(base_url=f"http://127.0.0.1:{config['http_port']}", auth=(USER, config["password"]))
        assert orthanc.post("/modalities/medstack/echo", json={}).status_code == 200

        # the supervisor restarts a listener that dies, on the same port
        listener = int((run / "pids" / "listener.pid").read_text())
        os.killpg(listener, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if int((run / "pids" / "listener.pid").read_text()) != listener and \
                    orthanc.post("/modalities/medstack/echo", json={}).status_code == 200:
                break
            time.sleep(2)
        else:
            raise AssertionError("the listener was not restarted")
        pids.append(int((run / "pids" / "listener.pid").read_text()))
    finally:
        down = _medstack(["down"], env)
    assert down.returncode == 0
    alive = [p for pid in pids if psutil.pid_exists(pid) for p in [psutil.Process(pid)]
             if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}"
    assert _medstack(["status"], env).returncode == 1

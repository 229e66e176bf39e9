"""compose.yaml is consistent: every service has a healthcheck, images are pinned, ports match settings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from medstack.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_every_service_has_a_healthcheck(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert "healthcheck" in service, f"{name} has no healthcheck"


def test_images_are_pinned(compose: dict) -> None:
    for name, service in compose["services"].items():
        image = service.get("image", "")
        assert image and ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image!r}"


def test_ports_match_settings(compose: dict) -> None:
    defaults = Settings()
    triton_ports = {p.split(":")[1] for p in compose["services"]["triton"]["ports"]}
    assert {str(defaults.triton_http_port), str(defaults.triton_grpc_port)} <= triton_ports
    assert f"{defaults.gateway_port}:{defaults.gateway_port}" in compose["services"]["gateway"]["ports"]


def test_docker_compose_config_passes_where_the_client_runs(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose client not installed")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                            text=True, env={"POSTGRES_PASSWORD": "x", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr

"""compose.yaml is a valid Compose file and agrees with the code it deploys.

No Docker engine on build machines: the file is checked against the Compose specification's JSON
schema (vendored by check-jsonschema), parsed, and compared with ``core.settings``, the gateway
settings and the Celery queues. ``docker compose config`` runs too where the client has compose.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import REPO_ROOT, Settings

COMPOSE = REPO_ROOT / "compose.yaml"
APP_SERVICES = ("gateway", "worker-volumes", "worker-batch")
TRITON_SERVICES = {"cpu": "triton-cpu", "gpu": "triton-gpu"}
PINNED_TAG = re.compile(r"^[\w./-]+:(\d[\w.-]*)$")  # a version tag, not latest/stable/a branch


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target → (source, read_only) from the short volume syntax."""
    mounts = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        read_only = parts[-1] == "ro"
        if read_only:
            parts = parts[:-1]
        source, target = ":".join(parts[:-1]), parts[-1]
        mounts[target] = (source, read_only)
    return mounts


def _flag(command: list[str], name: str) -> str | None:
    for i, part in enumerate(command):
        if part.startswith(name + "="):
            return part.split("=", 1)[1]
        if part == name and i + 1 < len(command):
            return command[i + 1]
    return None


def test_matches_the_compose_specification_schema() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (test extra) vendors the Compose schema")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_misspelt_key(compose: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("check_jsonschema")
    broken = dict(compose, services=dict(compose["services"]))
    redis = broken["services"]["redis"]
    broken["services"]["redis"] = dict(redis, healtcheck=redis["healthcheck"])
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and "healtcheck" in result.stdout + result.stderr


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test must be CMD or CMD-SHELL"


def test_images_are_pinned_to_versions(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert PINNED_TAG.match(image), f"{name}: image {image!r} is not pinned to a version tag"


def test_ports_match_settings(services: dict[str, Any]) -> None:
    defaults = Settings()
    triton_ports = {defaults.triton_http_port, defaults.triton_grpc_port, defaults.triton_metrics_port}
    for name in TRITON_SERVICES.values():
        published = {int(p.rsplit(":", 1)[1]) for p in services[name]["ports"]}
        assert published == triton_ports, name
        # loopback only: Triton's repository API can load and unload models
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    gateway = services["gateway"]
    assert _flag(gateway["command"], "--port") == str(defaults.gateway_port)
    assert any(p.endswith(f":{defaults.gateway_port}:{defaults.gateway_port}") for p in gateway["ports"])
    for name in APP_SERVICES:
        env = _env(services[name])
        assert env["MEDSTACK_TRITON_HTTP_PORT"] == str(defaults.triton_http_port), name
        assert env["MEDSTACK_TRITON_GRPC_PORT"] == str(defaults.triton_grpc_port), name
        assert env["MEDSTACK_TRITON_METRICS_PORT"] == str(defaults.triton_metrics_port), name


def test_app_environment_names_settings_that_exist(services: dict[str, Any]) -> None:

    known = set(Settings.model_fields)
    for name in APP_SERVICES:
        for variable in _env(services[name]):
            field = variable.removeprefix("MEDSTACK_").removesuffix("_FILE").lower()
            assert variable.startswith("MEDSTACK_") and field in known, f"{name}: {variable} is not a setting"


def test_app_services_mount_what_settings_point_at(compose: dict[str, Any], services: dict[str, Any]) -> None:
    named = set(compose["volumes"])
    for name in APP_SERVICES:
        env, mounts = _env(services[name]), _mounts(services[name])
        source, read_only = mounts[env["MEDSTACK_MODEL_REPOSITORY"]]
        assert read_only and "model_repository" in source, f"{name}: model repository must be mounted read-only"
        source, read_only = mounts[env["MEDSTACK_ARTIFACT_DIR"]]
        assert source in named and not read_only, f"{name}: artifacts must be a named, writable volume"
    for name in ("redis", "postgres"):
        for source, _ in _mounts(services[name]).values():
            assert source in named, f"{name}: data must live on a named volume"


def test_triton_has_a_cpu_and_a_gpu_profile(services: dict[str, Any]) -> None:
    app_host = _env(services["gateway"])["MEDSTACK_TRITON_HOST"]
    for profile, name in TRITON_SERVICES.items():
        triton = services[name]
        assert triton["profiles"] == [profile]
        assert app_host in triton["networks"]["default"]["aliases"], f"{name} must answer as {app_host!r}"
        command = triton["command"]
        repository = _flag(command, "--model-repository")
        assert _mounts(triton)[repository][1], f"{name}: model repository must be read-only"
        # explicit model control: a new version is served by a `load` call, without a restart
        assert _flag(command, "--model-control-mode") == "explicit" and _flag(command, "--load-model") == "*"
        assert _flag(command, "--strict-readiness") == "true"
    assert _flag(services["triton-cpu"]["command"], "--model-config-name") is None  # config.pbtxt, CPU
    gpu = services["triton-gpu"]
    assert _flag(gpu["command"], "--model-config-name") == "gpu"  # configs/gpu.pbtxt
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in services["triton-cpu"]


def test_gpu_config_names_a_file_that_export_writes() -> None:
    repository = REPO_ROOT / "model_repository"
    models = [p.parent for p in repository.glob("*/config.pbtxt")]
    if not models:
        pytest.skip("no model repository here (`make models` builds it)")
    for model in models:
        assert (model / "configs" / "gpu.pbtxt").exists(), f"{model.name} has no configs/gpu.pbtxt"


def test_app_services_start_after_their_dependencies(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        for needed in ("redis", "postgres"):
            assert depends[needed]["condition"] == "service_healthy", f"{name} → {needed}"
        for triton in TRITON_SERVICES.values():
            # exactly one Triton runs per profile; the other is absent, so it must not be required
            assert depends[triton] == {"condition": "service_healthy", "required": False}, f"{name} → {triton}"


def test_gateway_health_is_readiness(services: dict[str, Any]) -> None:
    test = " ".join(services["gateway"]["healthcheck"]["test"])
    assert "/readyz" in test, "`docker compose up --wait` should return when /readyz is green"


def test_one_worker_service_per_celery_queue(services: dict[str, Any]) -> None:
    from workers.celery_app import celery_app

    queues = {q.name for q in celery_app.conf.task_queues}
    served = {}
    for name, service in services.items():
        command = service.get("command", [])
        if "worker" in command and "celery" in command[:1]:
            queue = _flag(command, "--queues")
            served[queue] = name
            assert "," not in queue, f"{name}: one queue per service, so each scales on its own"
            assert _flag(command, "--concurrency") == "1", f"{name}: one long job per worker process"
            host = _flag(command, "--hostname").split("@")[0]
            check = " ".join(service["healthcheck"]["test"])
            assert f"-d {host}@$$HOSTNAME" in check, f"{name}: ping itself"
            # health checks skip ENTRYPOINT; without it the ping would not know the broker URL (a secret file)
            assert "medstack-entrypoint celery" in check, f"{name}: health check must read the secrets"
            assert "stop_grace_period" in service, f"{name}: give the running job time on SIGTERM"
    assert set(served) == queues


def test_redis_persists_with_aof(services: dict[str, Any]) -> None:
    command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in command


def test_flower_watches_the_broker(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert "flower" in " ".join(flower["command"]) and "--basic-auth" in " ".join(flower["command"])
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"]), "Flower is an operator tool: loopback only"


def test_secrets_come_from_files_never_from_this_file(compose: dict[str, Any], services: dict[str, Any]) -> None:
    defined = compose["secrets"]
    for secret in defined.values():
        assert set(secret) == {"file"} and secret["file"].startswith("${MEDSTACK_SECRETS:-./deploy/secrets}/")
    for name, service in services.items():
        for secret in service.get("secrets", []):
            assert secret in defined, f"{name}: undefined secret {secret}"
        for variable, value in _env(service).items():
            assert not re.search(r"://[^/\s]*:[^@/\s]+@", value), f"{name}: {variable} holds a password"
            if not variable.endswith("_FILE") and re.search(r"PASSWORD|SECRET|_KEY$|_URL$", variable):
                pytest.fail(f"{name}: {variable} must come from a secret file ({variable}_FILE)")
    ignored = (REPO_ROOT / "deploy" / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignored and "!.gitignore" in ignored, "deploy/secrets/ must stay out of git"


def test_docker_compose_config_passes_where_the_client_runs(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` client on this machine (schema and consistency checked above)")
    secrets = tmp_path / "secrets"
    subprocess.run(["sh", str(REPO_ROOT / "deploy" / "make-secrets.sh")], check=True, capture_output=True,
                   env={"MEDSTACK_SECRETS": str(secrets), "PATH": "/usr/bin:/bin"})
    for profile in TRITON_SERVICES:
        result = subprocess.run(
            [docker, "compose", "-f", str(COMPOSE), "--profile", profile, "config", "--quiet"],
            capture_output=True, text=True, env={"MEDSTACK_SECRETS": str(secrets), "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr

"""The deployment images: pinned bases, non-root users, dependencies from the lock, secrets as files."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.settings import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
DOCKERFILES = {"app": DEPLOY / "Dockerfile", "triton": DEPLOY / "triton" / "Dockerfile"}
PINNED = re.compile(r"^[\w./-]+:(\d[\w.-]*)(@sha256:[0-9a-f]{64})?$")


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def _from_images(path: Path) -> list[str]:
    args = {}
    images = []
    for instruction, rest in _instructions(path):
        if instruction == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args[name] = value
        elif instruction == "FROM":
            image = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_images_are_pinned(name: str) -> None:
    stages = set()
    for instruction, rest in _instructions(DOCKERFILES[name]):
        if instruction == "FROM" and " AS " in rest.upper():
            stages.add(rest.split()[-1])
    for image in _from_images(DOCKERFILES[name]):
        assert image in stages or PINNED.match(image), f"{name}: base image {image!r} is not pinned"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_images_run_as_a_non_root_user(name: str) -> None:
    users = [rest for instruction, rest in _instructions(DOCKERFILES[name]) if instruction == "USER"]
    assert users, f"{name}: no USER, the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as {users[-1]}"


def _lock() -> dict[str, str]:
    lines = (REPO_ROOT / "requirements" / "lock.txt").read_text().split()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in lines if "==" in line}


def test_app_image_installs_pyproject_dependencies_under_the_lock() -> None:
    text = DOCKERFILES["app"].read_text()
    assert "-c lock.txt" in text and "requirements/lock.txt" in text
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text, "CPU torch, as locally"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for spec in project["dependencies"] + project["optional-dependencies"]["postgres"]:
        name = canonicalize_name(Requirement(spec).name)
        assert name in lock, f"{spec} is not pinned in requirements/lock.txt: the image would float"
    assert lock["torch"] == "2.13.0"


def test_triton_image_pins_its_python_packages_from_the_triton_lock() -> None:
    triton_lock = {canonicalize_name(line.split("==")[0])
                   for line in (REPO_ROOT / "requirements" / "triton-lock.txt").read_text().split() if "==" in line}
    wanted = [line for line in (DEPLOY / "triton" / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert wanted
    for spec in wanted:
        assert canonicalize_name(Requirement(spec).name) in triton_lock, spec
    assert "-c /opt/medstack/triton-lock.txt" in DOCKERFILES["triton"].read_text()


def test_copied_paths_exist_and_pass_the_dockerignore() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    allowed = [line[1:].removesuffix("/**") for line in ignore if line.startswith("!")]
    for instruction, rest in _instructions(DOCKERFILES["app"]):
        if instruction != "COPY" or "--from=" in rest:
            continue
        sources = [part for part in shlex.split(rest) if not part.startswith("--")][:-1]
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"COPY {source}: missing"
            assert source in allowed, f"COPY {source}: excluded by deploy/Dockerfile.dockerignore"


def test_compose_builds_the_images_it_runs() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    for service in compose["services"].values():
        build = service.get("build")
        if build:
            assert (REPO_ROOT / build["context"] / build["dockerfile"]).exists()


# ---- secrets as files ----------------------------------------------------------------------------


def _entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(DEPLOY / "entrypoint.sh"), *command], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], **env})


def test_entrypoint_reads_secret_files_into_settings(tmp_path: Path) -> None:
    secret = tmp_path / "database_url"
    secret.write_text("postgresql+psycopg://medstack:pw@postgres:5432/medstack\n")
    result = _entrypoint({"MEDSTACK_DATABASE_URL_FILE": str(secret)},
                         "sh", "-c", 'printf "%s|%s" "$MEDSTACK_DATABASE_URL" "${MEDSTACK_DATABASE_URL_FILE-unset}"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == "postgresql+psycopg://medstack:pw@postgres:5432/medstack|unset"


def test_entrypoint_keeps_a_variable_that_is_set(tmp_path: Path) -> None:
    secret = tmp_path / "redis_url"
    secret.write_text("redis://from-file")
    result = _entrypoint({"MEDSTACK_REDIS_URL": "redis://explicit", "MEDSTACK_REDIS_URL_FILE": str(secret)},
                         "sh", "-c", 'printf %s "$MEDSTACK_REDIS_URL"')
    assert result.stdout == "redis://explicit"


def test_entrypoint_stops_on_a_missing_secret_file(tmp_path: Path) -> None:
    result = _entrypoint({"MEDSTACK_DATABASE_URL_FILE": str(tmp_path / "absent")}, "true")
    assert result.returncode == 78
    assert "MEDSTACK_DATABASE_URL_FILE" in result.stderr


def test_make_secrets_writes_every_compose_secret_once(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    env = {"MEDSTACK_SECRETS": str(folder), "PATH": os.environ["PATH"]}
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh")], check=True, capture_output=True, env=env)
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    names = {Path(s["file"]).name for s in compose["secrets"].values()}
    assert {p.name for p in folder.iterdir()} == names
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    password = (folder / "postgres_password").read_text()
    assert len(password) >= 32 and f":{password}@postgres:5432/" in (folder / "database_url").read_text()
    assert f":{(folder / 'redis_password').read_text()}@redis:6379/" in (folder / "redis_url").read_text()
    before = {p.name: p.read_text() for p in folder.iterdir()}
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh")], check=True, capture_output=True, env=env)
    assert {p.name: p.read_text() for p in folder.iterdir()} == before, "a second run must keep the secrets"

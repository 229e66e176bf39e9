"""compose.yaml's `pacs` profile agrees with the code: Orthanc's configuration is the one
`medstack.pacs.compose_config` writes, the listener's settings parse, and the addresses line up."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import REPO_ROOT, DicomwebServer, Settings
from medstack.pacs import COMPOSE_CONFIG, COMPOSE_LISTENER, compose_config


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())["services"]  # type: ignore[no-any-return]


def test_orthanc_runs_the_generated_configuration() -> None:
    assert json.loads((REPO_ROOT / COMPOSE_CONFIG).read_text()) == compose_config(), (
        "regenerate: python -c 'import json; from medstack.pacs import compose_config; "
        "print(json.dumps(compose_config(), indent=2))' > deploy/orthanc/orthanc.json")


def test_listener_settings_parse_and_line_up_with_orthanc(services: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    listener = services["dicom-listener"]
    for name, value in listener["environment"].items():  # read as the listener process reads them
        if not name.endswith("_FILE"):
            monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("MEDSTACK_BOOTSTRAP_KEY", raising=False)  # the tests' own; refused in production
    s = Settings()
    config = compose_config()
    assert (s.listener_ae_title, s.listener_port) == (COMPOSE_LISTENER.ae_title, COMPOSE_LISTENER.port)
    assert config["DicomModalities"]["medstack"] == [COMPOSE_LISTENER.ae_title, "dicom-listener", s.listener_port]
    assert config["DicomAet"] in s.listener_allowed_aes
    pacs = s.dicom_destinations["pacs"]
    assert (pacs.ae_title, pacs.host, pacs.port) == (config["DicomAet"], "orthanc", config["DicomPort"])
    assert all(route.destination in s.dicom_destinations for route in s.listener_routes)
    assert listener["ports"] == ["${MEDSTACK_DICOM_BIND:-0.0.0.0}:11112:11112"]


def test_make_secrets_names_the_bundled_orthanc(tmp_path: Path) -> None:
    env = {"MEDSTACK_SECRETS": str(tmp_path), "PATH": os.environ["PATH"]}
    subprocess.run(["sh", str(REPO_ROOT / "deploy" / "make-secrets.sh")], check=True, capture_output=True, env=env)
    servers = json.loads((tmp_path / "dicomweb_servers").read_text())
    server = DicomwebServer.model_validate(servers["pacs"])
    assert server.url == f"http://orthanc:{compose_config()['HttpPort']}/dicom-web"
    assert server.password.get_secret_value() == (tmp_path / "orthanc_password").read_text()  # type: ignore[union-attr]
    assert (tmp_path / "listener_api_key").read_text() == ""  # filled in once the gateway can make keys

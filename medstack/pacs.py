"""A real PACS for development and tests: Orthanc from Debian's packages, with its DICOMweb plugin.

``medstack pacs up`` (or ``medstack up --pacs``) writes a configuration into ``<run>/pacs/`` — its own
HTTP and DICOM ports, storage folder, a generated password, the listener as a known modality — and
starts ``Orthanc`` in its own process group. The compose service ``orthanc`` runs the same
configuration (`orthanc_config` is the one place it is written). Install with
``apt-get install orthanc orthanc-dicomweb`` (``make pacs-tools``).
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from core.settings import DicomNode, DicomwebServer
from core.triton import stop_process_group
from medstack.stack import StackError, _spawn, _wait, free_port

ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
MISSING = ("Orthanc with its DICOMweb plugin is not installed: `sudo apt-get install orthanc orthanc-dicomweb` "
           "(Debian/Ubuntu; `make pacs-tools` does it when run as root)")
USER = "medstack"


class OrthancError(StackError):
    pass


def orthanc_binary() -> str | None:
    """The Orthanc executable when it and the DICOMweb plugin are installed, else None."""
    found = next((shutil.which(name) for name in ORTHANC_BINARIES if shutil.which(name)), None)
    return found if found and DICOMWEB_PLUGIN.exists() else None


@dataclass(frozen=True)
class PacsConfig:
    """What a running Orthanc answers on, and how MedStack reaches it (stored as ``pacs.json``)."""

    http_port: int
    dicom_port: int
    ae_title: str
    password: str
    host: str = "127.0.0.1"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb(self) -> DicomwebServer:
        return DicomwebServer(url=f"{self.http_url}/dicom-web", username=USER, password=self.password)  # type: ignore[arg-type]

    @property
    def node(self) -> DicomNode:
        return DicomNode(ae_title=self.ae_title, host=self.host, port=self.dicom_port)

    def component_env(self) -> dict[str, str]:
        """Settings for worker, gateway and listener: this Orthanc as DICOMweb server and DIMSE
        destination ``pacs``, its AE allowed to send to the listener."""
        server = self.dicomweb.model_dump(mode="json") | {"password": self.password}
        return {
            "MEDSTACK_DICOMWEB_SERVERS": json.dumps({"pacs": server}),
            "MEDSTACK_DICOM_DESTINATIONS": json.dumps({"pacs": self.node.model_dump(mode="json")}),
        }


def orthanc_config(storage: str, http_port: int, dicom_port: int, ae_title: str, password: str,
                   modalities: dict[str, DicomNode] | None = None, remote_access: bool = False) -> dict[str, Any]:
    """Orthanc's configuration: DICOMweb on, HTTP behind a password, C-STORE from anyone (a PACS
    accepts what modalities push), C-MOVE/C-GET targets only the ``modalities`` named."""
    return {
        "Name": "MedStack PACS",
        "StorageDirectory": storage,
        "IndexDirectory": storage,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "DicomModalities": {name: [n.ae_title, n.host, n.port] for name, n in (modalities or {}).items()},
        "RemoteAccessAllowed": remote_access,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: password},
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "StableAge": 5,
        "HttpTimeout": 60,
    }


# compose.yaml's `orthanc` service: Orthanc's default ports, the listener service as C-STORE target, the
# password read from a secret file into ORTHANC_PASSWORD (Orthanc expands ${VAR} in its configuration)
COMPOSE_CONFIG = Path("deploy/orthanc/orthanc.json")
COMPOSE_LISTENER = DicomNode(ae_title="MEDSTACK", host="dicom-listener", port=11112)


def compose_config() -> dict[str, Any]:
    """The configuration the compose service runs (``deploy/orthanc/orthanc.json``; a test keeps them equal)."""
    return orthanc_config("/var/lib/orthanc/db", 8042, 4242, "ORTHANC", "${ORTHANC_PASSWORD}",
                          {"medstack": COMPOSE_LISTENER}, remote_access=True)


class Orthanc:
    """One Orthanc process with its configuration and storage under ``root``."""

    def __init__(self, root: Path, ae_title: str = "ORTHANC", listener: DicomNode | None = None) -> None:
        self.root = root
        self.ae_title = ae_title
        self.listener = listener
        self.process = None

    @property
    def state_file(self) -> Path:
        return self.root / "pacs.json"

    def config(self) -> PacsConfig | None:
        if not self.state_file.exists():
            return None
        return PacsConfig(**json.loads(self.state_file.read_text()))

    def start(self, log: Path, timeout_s: float = 60.0) -> PacsConfig:
        """Start Orthanc (ports and password kept from an earlier start, so clients stay configured)."""
        binary = orthanc_binary()
        if binary is None:
            raise OrthancError(MISSING)
        config = self.config() or PacsConfig(free_port(), free_port(), self.ae_title, secrets.token_urlsafe(18))
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        modalities = {"medstack": self.listener} if self.listener else {}
        config_file = self.root / "orthanc.json"
        config_file.write_text(json.dumps(orthanc_config(str(storage), config.http_port, config.dicom_port,
                                                         config.ae_title, config.password, modalities), indent=2))
        config_file.chmod(0o600)  # holds the password
        self.state_file.write_text(json.dumps(asdict(config)))
        self.state_file.chmod(0o600)
        log.parent.mkdir(parents=True, exist_ok=True)
        self.process = _spawn([binary, str(config_file)], log, {"PATH": "/usr/bin:/bin"})
        _wait(lambda: self.answers(config), "orthanc", timeout_s, self.process, log)
        return config

    @staticmethod
    def answers(config: PacsConfig) -> bool:
        try:
            return httpx.get(f"{config.http_url}/system", auth=(USER, config.password), timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process.pid)
            self.process = None

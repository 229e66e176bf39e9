"""``medstack up --pacs``: Orthanc and the DICOM listener as parts of the embedded stack.

Orthanc (`medstack.pacs`) starts before the worker and gateway, which get it as DICOMweb server and
DICOM destination ``pacs``; the listener starts after the gateway it submits to. Both have pid files
and logs like the other components, `medstack down` stops them, and the supervisor restarts them.
Defaults for a development host, each overridden by the ``MEDSTACK_LISTENER_*`` settings: Orthanc's AE
may send to the listener, CT series go to segmentation with results back to Orthanc, and the listener
gets its own API key (scope segmentation) created in the stack's database.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable

from core.keys import create_local_key
from core.settings import DicomNode
from medstack.pacs import Orthanc, PacsConfig
from medstack.stack import Stack

DEFAULT_ROUTES = [{"name": "ct", "match": {"Modality": ["CT"]}, "capability": "segmentation", "destination": "pacs"}]


def _orthanc(stack: Stack) -> Orthanc:
    s = stack.settings
    return Orthanc(s.run_dir / "pacs", listener=DicomNode(ae_title=s.listener_ae_title, host="127.0.0.1",
                                                          port=s.listener_port))


def start_pacs(stack: Stack, echo: Callable[[str], None]) -> dict[str, str]:
    """Orthanc running (started unless its pid is alive); the settings that point worker and gateway at it."""
    orthanc = _orthanc(stack)
    config = orthanc.config()
    if stack.run.pid("pacs") and config is not None and Orthanc.answers(config):
        echo(f"pacs: already running (pid {stack.run.pid('pacs')})")
    else:
        config = orthanc.start(stack.run.log_file("pacs"))
        assert orthanc.process is not None
        stack.run.pid_file("pacs").write_text(str(orthanc.process.pid))
        echo(f"pacs: Orthanc up (pid {orthanc.process.pid}, {config.http_url}, DICOM {config.ae_title}@"
             f"{config.dicom_port}; user medstack, password in {orthanc.state_file})")
    return config.component_env()


def _listener_key(stack: Stack) -> str:
    s = stack.settings
    if s.listener_api_key and s.listener_api_key.get_secret_value():
        return s.listener_api_key.get_secret_value()
    path = s.run_dir / "pacs" / "listener_key"
    if not path.exists():
        path.write_text(create_local_key("dicom-listener", "segmentation", s.sqlalchemy_url))
        path.chmod(0o600)
    return path.read_text()


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start_listener(stack: Stack, env: dict[str, str], echo: Callable[[str], None]) -> None:
    s = stack.settings
    config = _orthanc(stack).config()
    assert config is not None, "start_pacs first"
    listener_env = env | {
        "MEDSTACK_GATEWAY_HOST": s.gateway_host, "MEDSTACK_GATEWAY_PORT": str(s.gateway_port),
        "MEDSTACK_LISTENER_PORT": str(s.listener_port), "MEDSTACK_LISTENER_AE_TITLE": s.listener_ae_title,
        "MEDSTACK_LISTENER_ALLOWED_AES": json.dumps(sorted({*s.listener_allowed_aes, config.ae_title})),
        "MEDSTACK_LISTENER_API_KEY": _listener_key(stack),
    }
    if "MEDSTACK_LISTENER_ROUTES" not in os.environ:
        listener_env["MEDSTACK_LISTENER_ROUTES"] = json.dumps(DEFAULT_ROUTES)
    stack._start("listener", [sys.executable, "-m", "medstack.listener"], listener_env,
                 lambda: _port_open(s.listener_port), echo, timeout_s=30)


def pacs_status(stack: Stack) -> dict[str, str]:
    config: PacsConfig | None = _orthanc(stack).config()
    rows = {}
    for name, healthy in (("pacs", config is not None and Orthanc.answers(config)),
                          ("listener", _port_open(stack.settings.listener_port))):
        pid = stack.run.pid(name)
        rows[name] = f"{'healthy' if healthy else 'DOWN'} ({f'pid {pid}' if pid else 'not started'})"
    return rows

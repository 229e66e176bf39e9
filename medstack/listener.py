"""The DICOM listener: a C-STORE SCP that turns each series a modality or PACS pushes into a job.

    python -m medstack.listener          # or `medstack up --pacs`, which also keeps it running

Its own AE title and port (``MEDSTACK_LISTENER_*``), C-ECHO, a calling-AE allow-list (an empty list
refuses everyone) and a limit on concurrent associations. Each instance is written at once to
``<artifacts>/dicom/incoming/<series>/`` (write-then-rename), so nothing received is lost when the
listener restarts. A series is complete when no association that sent to it is still open and nothing
arrived for ``listener_series_timeout_s``; then the routing rules (`medstack.routing`) pick a job, the
series is zipped and submitted through the gateway like any upload — so its validation, typed job
errors, audit and idempotency are the gateway's — and the folder is removed. The idempotency key is
the digest of the series' SOP Instance UIDs: the same instances never become two jobs, even when the
listener dies between submitting and removing the folder. A sender that disconnects mid-series leaves
a partial series, handled once it times out (a gap then fails the job as ``invalid-volume``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from collections import defaultdict
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pydicom
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from core.capabilities import CAPABILITIES
from core.settings import PacsRoute, Settings, settings
from medstack.routing import check_routes, route_for

log = logging.getLogger("medstack.listener")
UID = re.compile(r"^[0-9][0-9.]{0,63}$")
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
POLL_S = 1.0
RETRY_S = 10.0


class ListenerError(RuntimeError):
    pass


class SeriesFolders:
    """Received instances on disk, one folder per series, and which series are complete."""

    def __init__(self, root: Path, timeout_s: float) -> None:
        self.incoming, self.unrouted, self.rejected = root / "incoming", root / "unrouted", root / "rejected"
        for folder in (self.incoming, self.unrouted, self.rejected):
            folder.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self.lock = threading.Lock()
        self.open: dict[str, set[int]] = defaultdict(set)  # series → associations that sent to it, still open

    def store(self, series_uid: str, sop_uid: str, data: bytes, association: int) -> None:
        folder = self.incoming / series_uid
        with self.lock:
            folder.mkdir(exist_ok=True)
            self.open[series_uid].add(association)
        tmp = folder / f".tmp-{sop_uid}"
        tmp.write_bytes(data)
        os.replace(tmp, folder / f"{sop_uid}.dcm")

    def closed(self, association: int) -> None:
        with self.lock:
            for senders in self.open.values():
                senders.discard(association)

    def complete(self, now: float | None = None) -> list[Path]:
        """Series folders no open association sends to and nothing arrived in for ``timeout_s``."""
        now = time.time() if now is None else now
        done = []
        with self.lock:
            for folder in sorted(self.incoming.iterdir()):
                files = list(folder.glob("*.dcm"))
                if not files or self.open.get(folder.name):
                    continue
                if now - max(f.stat().st_mtime for f in files) >= self.timeout_s:
                    done.append(folder)
        return done

    def set_aside(self, folder: Path, where: Path) -> None:
        with self.lock:
            target = where / f"{folder.name}-{int(time.time())}"
            folder.rename(target)
            self.open.pop(folder.name, None)

    def remove(self, folder: Path) -> None:
        with self.lock:
            shutil.rmtree(folder)
            self.open.pop(folder.name, None)


def idempotency_key(files: list[Path], route: PacsRoute) -> str:
    digest = hashlib.sha256(("\n".join(sorted(f.stem for f in files)) + "\n" + route.name).encode()).hexdigest()
    return f"dicom-{digest[:48]}"


class Submitter:
    """Submits a complete series to the gateway as the job its route names."""

    def __init__(self, gateway_url: str, api_key: str, timeout_s: float = 120.0) -> None:
        self.gateway_url, self.api_key, self.timeout_s = gateway_url, api_key, timeout_s

    def submit(self, folder: Path, files: list[Path], route: PacsRoute) -> httpx.Response:
        capability = next(c for c in CAPABILITIES if c.name == route.capability)
        fields = {k: v for k, v in {"model": route.model, "destination": route.destination}.items() if v}
        with tempfile.TemporaryDirectory(dir=folder.parent.parent) as tmp:
            archive = Path(tmp) / "series.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zipped:
                for path in files:
                    zipped.write(path, arcname=path.name)
            with archive.open("rb") as body:
                return httpx.post(
                    f"{self.gateway_url}{capability.route_prefix}/jobs", data=fields,
                    files={"file": ("series.zip", body, "application/zip")}, timeout=self.timeout_s,
                    headers={"Authorization": f"Bearer {self.api_key}",
                             "Idempotency-Key": idempotency_key(files, route)},
                )


class Listener:
    def __init__(self, s: Settings, submitter: Submitter) -> None:
        if not s.listener_allowed_aes:
            raise ListenerError("MEDSTACK_LISTENER_ALLOWED_AES is empty: no calling AE title may send; list the "
                                "modalities and PACS that send to this listener (JSON list of AE titles)")
        check_routes(s.listener_routes)
        self.settings, self.submitter = s, submitter
        self.folders = SeriesFolders(s.artifact_dir / "dicom", s.listener_series_timeout_s)
        self.retry_at: dict[str, float] = {}
        self.ae = AE(ae_title=s.listener_ae_title)
        self.ae.maximum_associations = s.listener_max_associations
        self.ae.require_calling_aet = list(s.listener_allowed_aes)
        self.ae.supported_contexts = AllStoragePresentationContexts
        self.ae.add_supported_context(Verification)
        self.server: Any = None

    def start(self) -> None:
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_RELEASED, self._on_closed),
                    (evt.EVT_ABORTED, self._on_closed)]
        self.server = self.ae.start_server((self.settings.listener_host, self.settings.listener_port), block=False,
                                           evt_handlers=handlers)
        log.info("listening as %s on %s:%d", self.settings.listener_ae_title, self.settings.listener_host,
                 self.settings.listener_port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def _on_store(self, event: evt.Event) -> int:
        try:
            ds = event.dataset
            series_uid, sop_uid = str(ds.SeriesInstanceUID), str(event.request.AffectedSOPInstanceUID)
        except Exception:  # an instance we cannot parse is refused, the association goes on
            return CANNOT_UNDERSTAND
        if not (UID.match(series_uid) and UID.match(sop_uid)):
            return CANNOT_UNDERSTAND
        try:
            self.folders.store(series_uid, sop_uid, event.encoded_dataset(include_meta=True), id(event.assoc))
        except OSError:
            log.exception("an instance could not be written")
            return OUT_OF_RESOURCES
        return SUCCESS

    def _on_closed(self, event: evt.Event) -> None:
        self.folders.closed(id(event.assoc))

    def poll(self) -> None:
        """Route and submit every complete series; a gateway that does not answer is retried later."""
        for folder in self.folders.complete():
            if time.monotonic() < self.retry_at.get(folder.name, 0.0):
                continue
            try:
                self._dispatch(folder)
            except Exception:  # one bad series (an unreadable header…) must not stop the listener
                log.exception("a series could not be dispatched; kept in %s", self.folders.rejected)
                self.folders.set_aside(folder, self.folders.rejected)

    def _dispatch(self, folder: Path) -> None:
        files = sorted(folder.glob("*.dcm"))
        route = route_for(self.settings.listener_routes, pydicom.dcmread(files[0], stop_before_pixels=True))
        if route is None:
            log.warning("a series of %d instance(s) matches no routing rule; kept in %s", len(files),
                        self.folders.unrouted)
            self.folders.set_aside(folder, self.folders.unrouted)
            return
        try:
            response = self.submitter.submit(folder, files, route)
        except httpx.HTTPError as error:
            log.warning("gateway unreachable (%s); retrying in %.0f s", type(error).__name__, RETRY_S)
            self.retry_at[folder.name] = time.monotonic() + RETRY_S
            return
        if response.status_code in (200, 202):
            log.info("series of %d instance(s) → job %s (route %s)", len(files), response.json()["id"], route.name)
            self.folders.remove(folder)
            self.retry_at.pop(folder.name, None)
        elif response.status_code in (429, 502, 503, 504):
            log.warning("gateway answered %d; retrying in %.0f s", response.status_code, RETRY_S)
            self.retry_at[folder.name] = time.monotonic() + RETRY_S
        else:
            kind = response.json().get("type", "") if "json" in response.headers.get("content-type", "") else ""
            log.error("gateway refused a series of %d instance(s): %d %s; kept in %s", len(files),
                      response.status_code, kind, self.folders.rejected)
            self.folders.set_aside(folder, self.folders.rejected)


def api_key(s: Settings) -> str:
    key = s.listener_api_key if s.listener_api_key and s.listener_api_key.get_secret_value() else s.bootstrap_key
    if key is None:
        raise ListenerError("the listener submits jobs through the gateway: set MEDSTACK_LISTENER_API_KEY to a key "
                            "with the routes' scopes (`medstack keys create --name dicom-listener --scopes "
                            "segmentation`)")
    return key.get_secret_value()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    gateway_url = f"http://{settings.gateway_host}:{settings.gateway_port}"
    try:
        listener = Listener(settings, Submitter(gateway_url, api_key(settings)))
    except (ListenerError, ValueError) as error:
        log.error("%s", error)
        raise SystemExit(2) from error
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    listener.start()
    try:
        while not stopping.wait(POLL_S):
            listener.poll()
    finally:
        listener.stop()


if __name__ == "__main__":
    main()

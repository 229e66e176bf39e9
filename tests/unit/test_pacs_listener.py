"""The DICOM listener (medstack/listener.py) with a real pynetdicom peer on loopback: allow-list, series
grouping by inactivity, a sender that disconnects mid-series, each series submitted once."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from core.settings import PacsRoute, Settings
from medstack.listener import Listener, ListenerError, SeriesFolders, idempotency_key
from medstack.stack import free_port
from services.common.dicom_series import write_ct_series
from services.common.volume import Volume

ROUTE = PacsRoute(name="ct", match={"Modality": ["CT"]}, model="reference_hutissue")


class Recorder:
    """Stands in for the gateway: records what would be submitted, answers like the gateway would."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []
        self.down = False

    def submit(self, folder: Path, files: list[Path], route: PacsRoute) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("refused")
        self.calls.append(([f.name for f in files], route.name))
        return httpx.Response(202, json={"id": f"job-{len(self.calls)}"})


def ct_files(folder: Path, slices: int = 3) -> list[Path]:
    volume = Volume(np.zeros((slices, 8, 8), np.int16) - 1000, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                    (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return write_ct_series(volume, folder)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Listener, Recorder, int]]:
    port = free_port()
    s = Settings(artifact_dir=tmp_path / "artifacts", listener_port=port, listener_allowed_aes=["MODALITY"],
                 listener_series_timeout_s=0.5, listener_routes=[ROUTE])
    recorder = Recorder()
    listener = Listener(s, recorder)  # type: ignore[arg-type]
    listener.start()
    yield listener, recorder, port
    listener.stop()


def send(port: int, paths: list[Path], calling_ae: str = "MODALITY", abort: bool = False) -> list[int]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSTACK")
    if not assoc.is_established:
        return []
    statuses = [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    assoc.abort() if abort else assoc.release()
    return statuses


def settle(listener: Listener, seconds: float = 0.8) -> None:
    time.sleep(seconds)
    listener.poll()


def test_a_series_is_submitted_once_after_its_sender_went_quiet(running, tmp_path: Path) -> None:
    listener, recorder, port = running
    paths = ct_files(tmp_path / "series")
    assert send(port, paths) == [0, 0, 0]
    listener.poll()
    assert recorder.calls == []  # not yet quiet for the timeout
    settle(listener)
    assert recorder.calls == [(sorted(f"{pydicom.dcmread(p).SOPInstanceUID}.dcm" for p in paths), "ct")]
    settle(listener)
    assert len(recorder.calls) == 1  # never twice
    assert list(listener.folders.incoming.iterdir()) == []


def test_a_sender_that_disconnects_mid_series_leaves_it_waiting_then_handled_once(running, tmp_path: Path) -> None:
    listener, recorder, port = running
    paths = ct_files(tmp_path / "series", slices=4)
    assert send(port, paths[:2], abort=True) == [0, 0]
    listener.poll()
    assert recorder.calls == []
    settle(listener)
    assert len(recorder.calls) == 1 and len(recorder.calls[0][0]) == 2  # the partial series, once


def test_an_open_association_keeps_its_series_waiting(tmp_path: Path) -> None:
    folders = SeriesFolders(tmp_path, timeout_s=1.0)
    folders.store("1.2.3", "1.2.3.4", b"x", association=7)
    later = time.time() + 60
    assert folders.complete(now=later) == []  # the sender is still connected
    folders.closed(7)
    assert [f.name for f in folders.complete(now=later)] == ["1.2.3"]
    assert folders.complete(now=time.time()) == []  # closed, but not quiet long enough


def test_an_unknown_calling_ae_is_refused(running, tmp_path: Path) -> None:
    listener, recorder, port = running
    assert send(port, ct_files(tmp_path / "series"), calling_ae="INTRUDER") == []
    settle(listener)
    assert recorder.calls == [] and list(listener.folders.incoming.iterdir()) == []


def test_a_series_no_rule_matches_is_set_aside(running, tmp_path: Path) -> None:
    listener, recorder, port = running
    paths = ct_files(tmp_path / "series")
    for path in paths:  # an MR series; the only rule routes CT
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    send(port, paths)
    settle(listener)
    assert recorder.calls == []
    assert len(list(listener.folders.unrouted.iterdir())) == 1


def test_an_unreachable_gateway_is_retried_later(running, tmp_path: Path, monkeypatch) -> None:
    listener, recorder, port = running
    recorder.down = True
    send(port, ct_files(tmp_path / "series"))
    settle(listener)
    assert len(list(listener.folders.incoming.iterdir())) == 1  # kept
    recorder.down = False
    monkeypatch.setattr("medstack.listener.RETRY_S", 0.0)
    listener.retry_at.clear()
    listener.poll()
    assert len(recorder.calls) == 1


def test_no_allow_list_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ListenerError, match="MEDSTACK_LISTENER_ALLOWED_AES"):
        Listener(Settings(artifact_dir=tmp_path), Recorder())  # type: ignore[arg-type]


def test_idempotency_key_depends_on_the_instances_not_their_order() -> None:
    a, b = Path("1.2.3.dcm"), Path("1.2.4.dcm")
    assert idempotency_key([a, b], ROUTE) == idempotency_key([b, a], ROUTE)
    assert idempotency_key([a], ROUTE) != idempotency_key([a, b], ROUTE)
    assert len(idempotency_key([a], ROUTE)) <= 100 and os.sep not in idempotency_key([a], ROUTE)


def test_associations_past_the_limit_are_refused(tmp_path: Path) -> None:
    port = free_port()
    s = Settings(artifact_dir=tmp_path / "artifacts", listener_port=port, listener_allowed_aes=["MODALITY"],
                 listener_max_associations=1)
    listener = Listener(s, Recorder())  # type: ignore[arg-type]
    listener.start()
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    try:
        first = ae.associate("127.0.0.1", port, ae_title="MEDSTACK")
        second = ae.associate("127.0.0.1", port, ae_title="MEDSTACK")
        assert first.is_established and not second.is_established
        first.release()
        deadline = time.monotonic() + 10  # the server ends the first association's thread on its own time
        while not (third := ae.associate("127.0.0.1", port, ae_title="MEDSTACK")).is_established:
            assert time.monotonic() < deadline, "no slot came free after a release"
            time.sleep(0.2)
        third.release()
    finally:
        listener.stop()


def test_an_unreadable_series_is_set_aside_and_the_listener_goes_on(running, tmp_path: Path) -> None:
    listener, recorder, port = running
    folder = listener.folders.incoming / "1.2.3"
    folder.mkdir()
    (folder / "1.2.3.4.dcm").write_bytes(b"not DICOM")
    os.utime(folder / "1.2.3.4.dcm", (time.time() - 60, time.time() - 60))
    listener.poll()
    assert recorder.calls == [] and len(list(listener.folders.rejected.iterdir())) == 1
    send(port, ct_files(tmp_path / "series"))
    settle(listener)
    assert len(recorder.calls) == 1

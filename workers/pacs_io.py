"""A job's PACS ends: fetch its input from a DICOMweb server before the job function runs, and deliver
its DICOM result (STOW-RS back to that server, C-STORE to a destination AE) after it succeeded.

Job parameters name the ends — ``source: {"dicomweb": <server>, "study_uid", "series_uid"}`` and
``destination: <node>`` — and `core.settings` holds their addresses and credentials. A job that fails
delivers nothing, so a PACS never receives a result of a failed job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import DicomNode, DicomwebServer, settings
from services.common.dicomweb import fetch_series, store_instances
from services.common.dimse import send_files
from services.common.job_io import SEG_NAME, JobInputError, Progress

FETCHED_NAME = "input.zip"


def _server(name: str) -> DicomwebServer:
    try:
        return settings.dicomweb_servers[name]
    except KeyError:
        raise JobInputError("invalid-params", f"no DICOMweb server named {name!r} is configured") from None


def _node(name: str) -> DicomNode:
    try:
        return settings.dicom_destinations[name]
    except KeyError:
        raise JobInputError("invalid-params", f"no DICOM destination named {name!r} is configured") from None


def fetch_source(params: dict[str, Any], job_dir: Path, progress: Progress) -> Path | None:
    """The series a ``source`` names, fetched once into ``job_dir`` (a rerun reuses it); None without one."""
    source = params.get("source")
    if not source:
        return None
    path = job_dir / FETCHED_NAME
    if not path.exists():
        progress("fetching", 0.0)
        fetch_series(_server(source["dicomweb"]), source["study_uid"], source["series_uid"], path)
    return path


def deliver(params: dict[str, Any], job_dir: Path) -> list[dict[str, Any]]:
    """Send the job's DICOM SEG where its parameters say; one record per delivery (none without a SEG)."""
    seg = job_dir / SEG_NAME
    if not seg.exists():
        return []
    done = []
    source = params.get("source")
    if source and _server(source["dicomweb"]).store_results:
        done.append({"to": source["dicomweb"], **store_instances(_server(source["dicomweb"]), [seg])})
    if params.get("destination"):
        node = _node(params["destination"])
        done.append({"to": params["destination"], **send_files(node, [seg], settings.listener_ae_title)})
    return done

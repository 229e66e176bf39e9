"""DICOMweb in and out of a job: fetch a series with WADO-RS into the job folder (or the one instance of a
radiograph for a synchronous report), store results with STOW-RS.

The server is named by the job and looked up in the configuration (`core.settings.DicomwebServer`):
its URL and credentials never come from a request. The fetched series is written as an uncompressed
zip of its instances, the very input `services.common.dicom_series.read_dicom_zip` validates for an
upload, so a series from a PACS passes the same checks (gaps, mixed orientations…) as one uploaded.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from core.settings import DicomwebServer
from services.common.dicom_series import MAX_MEMBERS, MAX_UNCOMPRESSED
from services.common.job_io import JobInputError

SOURCE_NOT_FOUND = "source-not-found"
SOURCE_UNAVAILABLE = "source-unavailable"
DELIVERY_FAILED = "delivery-failed"
NOT_SINGLE_IMAGE = "not-single-image"


class PacsError(JobInputError):
    """An exchange with a PACS (DICOMweb or DIMSE) failed; ``kind`` types it (the job's ``error.type``),
    the message says what failed without quoting patient data."""


def client_for(server: DicomwebServer) -> DICOMwebClient:
    session = requests.Session()
    if server.username is not None:
        session.auth = (server.username, server.password.get_secret_value() if server.password else "")
    return DICOMwebClient(server.url, session=session, timeout=server.timeout_s)


def _http_failure(error: requests.RequestException, what: str) -> PacsError:
    status = error.response.status_code if error.response is not None else None
    if status == 404:
        return PacsError(SOURCE_NOT_FOUND, f"{what}: the server has no such study/series (HTTP 404)")
    reason = f"HTTP {status}" if status else type(error).__name__
    return PacsError(SOURCE_UNAVAILABLE, f"{what}: the DICOMweb server did not answer as expected ({reason})")


def fetch_series(server: DicomwebServer, study_uid: str, series_uid: str, zip_path: Path) -> int:
    """WADO-RS every instance of the series into ``zip_path`` (write-then-rename); the instance count."""
    tmp = zip_path.with_name(f".tmp-{zip_path.name}")
    count, size = 0, 0
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for dataset in client_for(server).iter_series(study_uid, series_uid):
                count += 1
                buffer = io.BytesIO()
                dataset.save_as(buffer, enforce_file_format=True)
                size += buffer.tell()
                if count > MAX_MEMBERS or size > MAX_UNCOMPRESSED:
                    raise PacsError("invalid-volume", f"the series holds more than {MAX_MEMBERS} instances or "
                                        f"{MAX_UNCOMPRESSED >> 30} GiB; send one series")
                archive.writestr(f"{count:05d}.dcm", buffer.getvalue())
    except requests.RequestException as error:
        tmp.unlink(missing_ok=True)
        raise _http_failure(error, "WADO-RS retrieve") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if count == 0:
        tmp.unlink(missing_ok=True)
        raise PacsError(SOURCE_NOT_FOUND, "WADO-RS retrieve: the series has no instances")
    os.replace(tmp, zip_path)
    return count


def fetch_instance(server: DicomwebServer, study_uid: str, series_uid: str) -> pydicom.Dataset:
    """WADO-RS the one instance of a single-image series (a radiograph); `PacsError` otherwise."""
    found: list[pydicom.Dataset] = []
    try:
        for dataset in client_for(server).iter_series(study_uid, series_uid):
            found.append(dataset)
            if len(found) > 1:
                raise PacsError(NOT_SINGLE_IMAGE, "the series holds more than one instance; name a series of "
                                "one image")
    except requests.RequestException as error:
        raise _http_failure(error, "WADO-RS retrieve") from None
    if not found:
        raise PacsError(SOURCE_NOT_FOUND, "WADO-RS retrieve: the series has no instances")
    return found[0]


def store_instances(server: DicomwebServer, paths: Sequence[Path]) -> dict[str, Any]:
    """STOW-RS the files at ``paths``; what the server stored (SOP Instance UIDs), or `PacsError`."""
    return store_datasets(server, [pydicom.dcmread(path) for path in paths])


def store_datasets(server: DicomwebServer, datasets: Sequence[pydicom.Dataset]) -> dict[str, Any]:
    """STOW-RS ``datasets``; what the server stored (SOP Instance UIDs), or `PacsError`."""
    try:
        response = client_for(server).store_instances(list(datasets))
    except requests.RequestException as error:
        failure = _http_failure(error, "STOW-RS store")
        raise PacsError(DELIVERY_FAILED, str(failure)) from None
    failed = [str(item.ReferencedSOPInstanceUID) for item in response.get("FailedSOPSequence", [])]
    if failed:
        raise PacsError(DELIVERY_FAILED, f"STOW-RS store: the server refused {len(failed)} of {len(datasets)} "
                            "instance(s)")
    stored = [str(item.ReferencedSOPInstanceUID) for item in response.get("ReferencedSOPSequence", [])]
    return {"protocol": "stow-rs", "sop_instance_uids": stored}

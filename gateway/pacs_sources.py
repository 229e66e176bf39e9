"""Jobs whose input is on a PACS: a JSON body naming a series on a configured DICOMweb server.

The gateway checks only that the names (server, destination) are configured — it never contacts the
PACS: the worker fetches the series (``workers/pacs_io.py``), so a slow PACS never holds a request.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from core.settings import settings
from gateway.api.forms import validation_problem
from gateway.problems import Problem
from gateway.schemas import DicomwebSource
from gateway.uploads import SavedInput, media_type

M = TypeVar("M", bound=BaseModel)
MAX_JSON_BYTES = 64 << 10


def is_json(request: Request) -> bool:
    return media_type(request) == "application/json"


async def read_json(request: Request, options: type[M]) -> M:
    """The JSON body validated as ``options`` (422 with the fields that are wrong)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise Problem(413, "Body too large", f"a JSON job request is at most {MAX_JSON_BYTES >> 10} KiB",
                          kind="payload-too-large")
    try:
        return options.model_validate_json(body)
    except ValidationError as error:
        raise validation_problem(error) from error


def check_configured(source: DicomwebSource | None, destination: str | None) -> None:
    """422 when the request names a server or destination the configuration does not know."""
    if source is not None and source.dicomweb not in settings.dicomweb_servers:
        raise Problem(422, "Unknown DICOMweb server", f"no DICOMweb server named {source.dicomweb!r} is configured "
                      f"(configured: {', '.join(sorted(settings.dicomweb_servers)) or 'none'})",
                      kind="unknown-dicomweb-server")
    if destination is not None and destination not in settings.dicom_destinations:
        raise Problem(422, "Unknown DICOM destination", f"no DICOM destination named {destination!r} is configured "
                      f"(configured: {', '.join(sorted(settings.dicom_destinations)) or 'none'})",
                      kind="unknown-dicom-destination")


async def source_input(source: DicomwebSource, directory: Path) -> SavedInput:
    """The job folder of a PACS job: no file yet (the worker fetches it); the digest names the series."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(json.dumps(source.model_dump(), sort_keys=True).encode()).hexdigest()
    return SavedInput(name="", sha256=digest, size=0)

"""A job naming a DICOMweb series (gateway/pacs_sources.py): names are checked against the configuration,
addresses are never request fields, the series is named once."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import DicomNode, DicomwebServer
from gateway.pacs_sources import check_configured
from gateway.problems import Problem
from gateway.schemas import DicomwebSource, SegmentationSourceJobCreate

SOURCE = {"dicomweb": "pacs", "study_uid": "1.2.3", "series_uid": "1.2.3.4"}


def test_a_url_or_credentials_in_the_request_are_refused() -> None:
    for extra in ({"url": "http://elsewhere/dicom-web"}, {"password": "x"}):
        with pytest.raises(ValidationError):
            SegmentationSourceJobCreate.model_validate({"source": SOURCE | extra})


def test_the_series_is_named_once() -> None:
    assert SegmentationSourceJobCreate.model_validate({"source": SOURCE, "series_uid": "1.2.3.4"})
    with pytest.raises(ValidationError, match="differs"):
        SegmentationSourceJobCreate.model_validate({"source": SOURCE, "series_uid": "1.2.3.5"})


def test_names_must_be_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.settings import settings

    monkeypatch.setattr(settings, "dicomweb_servers", {"pacs": DicomwebServer(url="http://pacs/dicom-web")})
    monkeypatch.setattr(settings, "dicom_destinations", {"pacs": DicomNode(ae_title="PACS", host="pacs", port=104)})
    check_configured(DicomwebSource(**SOURCE), "pacs")
    with pytest.raises(Problem) as server:
        check_configured(DicomwebSource(**SOURCE | {"dicomweb": "other"}), None)
    with pytest.raises(Problem) as destination:
        check_configured(None, "other")
    assert (server.value.status, server.value.kind) == (422, "unknown-dicomweb-server")
    assert (destination.value.status, destination.value.kind) == (422, "unknown-dicom-destination")

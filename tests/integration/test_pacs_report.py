"""Reports over DICOMweb with a DICOM SR back (docs/pacs.md), with real peers: the real chest CR is in Orthanc
(Debian's package), ``POST /v1/reports`` names it by UIDs, the gateway retrieves it by WADO-RS, Triton's
``report_generate`` writes the report, and a Comprehensive SR referencing the CR comes back into the study by
STOW-RS, where it must pass ``dciodvfy`` without errors. The upload's checks hold for a fetched image too."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from services.common.dicom_sr import SERIES_NUMBER
from tests.cr_cases import real_cr_bytes
from tests.integration.test_pacs import orthanc, orthanc_instances, pacs_stack  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def put_cr(rest_client, **tags: str) -> pydicom.Dataset:  # noqa: ANN001
    """The real CR (with ``tags`` changed) stored in Orthanc through its own REST API; its header."""
    data = real_cr_bytes(**tags)
    rest_client.post("/instances", content=data).raise_for_status()
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)


def source_of(ds: pydicom.Dataset, server: str = "pacs") -> dict[str, str]:
    return {"dicomweb": server, "study_uid": ds.StudyInstanceUID, "series_uid": ds.SeriesInstanceUID}


def dciodvfy_errors(ds: pydicom.Dataset, path: Path) -> list[str]:
    ds.save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


def test_report_of_a_cr_in_orthanc_comes_back_as_an_sr(pacs_stack, orthanc, tmp_path):  # noqa: F811
    with orthanc.rest() as rest:
        cr = put_cr(rest)
    with pacs_stack.client() as client:
        response = client.post("/v1/reports", json={"source": source_of(cr), "beam_size": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["text"] and body["input_check"]["modality"] == "CR" and body["input_check"]["chest_radiograph"]

    srs = orthanc_instances(orthanc, {"StudyInstanceUID": cr.StudyInstanceUID, "Modality": "SR"})
    assert len(srs) == 1
    sr = srs[0]
    assert body["deliveries"] == [{"to": "pacs", "protocol": "stow-rs", "sop_instance_uids": [sr.SOPInstanceUID]}]
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and sr.SeriesNumber == SERIES_NUMBER
    assert sr.PatientID == cr.PatientID and sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == cr.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cr.SOPInstanceUID
    findings, impression = (section.ContentSequence[0] for section in sr.ContentSequence
                            if section.ValueType == "CONTAINER")
    assert findings.TextValue == body["text"]
    image = findings.ContentSequence[0].ReferencedSOPSequence[0]
    assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (cr.SOPClassUID, cr.SOPInstanceUID)
    present = [f["name"].replace("_", " ") for f in body["findings"] if f["present"]]
    assert all(name in impression.TextValue for name in present) and "not verified" in impression.TextValue

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian: apt-get install dicom3tools; `make pacs-tools`)")
    assert dciodvfy_errors(sr, tmp_path / "sr.dcm") == []


def test_a_limb_radiograph_in_orthanc_is_declined_and_nothing_is_stored(pacs_stack, orthanc):  # noqa: F811
    uid = pydicom.uid.generate_uid
    with orthanc.rest() as rest:
        limb = put_cr(rest, BodyPartExamined="EXTREMITY", StudyInstanceUID=uid(), SeriesInstanceUID=uid(),
                      SOPInstanceUID=uid())
    with pacs_stack.client() as client:
        response = client.post("/v1/reports", json={"source": source_of(limb), "beam_size": 1})
    assert response.status_code == 422
    assert response.json()["type"].endswith("/not-chest-radiograph")
    assert orthanc_instances(orthanc, {"StudyInstanceUID": limb.StudyInstanceUID, "Modality": "SR"}) == []


def test_unknown_server_and_missing_series_are_refused(pacs_stack):  # noqa: F811
    missing = {"dicomweb": "pacs", "study_uid": "1.2.826.0.1.3680043.8.498.98",
               "series_uid": "1.2.826.0.1.3680043.8.498.98.1"}
    with pacs_stack.client() as client:
        unknown = client.post("/v1/reports", json={"source": {**missing, "dicomweb": "elsewhere"}})
        absent = client.post("/v1/reports", json={"source": missing})
        address = client.post("/v1/reports", json={"source": missing, "url": "http://attacker.example/dicom-web"})
    assert unknown.status_code == 422 and unknown.json()["type"].endswith("/unknown-dicomweb-server")
    assert absent.status_code == 422 and absent.json()["type"].endswith("/source-not-found"), absent.text
    assert address.status_code == 422 and address.json()["type"].endswith("/validation-error")

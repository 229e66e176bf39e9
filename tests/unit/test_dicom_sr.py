"""The report SR (services/common/dicom_sr.py) on the real chest CR's header: same patient and study, a new
series, the texts where TID 2000 puts them, the source referenced twice (IMAGE item and evidence), and, where
dicom3tools is installed, no error from ``dciodvfy``."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from services.common.dicom_sr import report_sr

FINDINGS = "The heart is normal in size. The lungs are clear."
IMPRESSION = "Called present by the finding head (calibrated thresholds): pleural effusion."


@pytest.fixture(scope="module")
def source() -> pydicom.Dataset:
    from services.report.cr import chest_cr_path

    return pydicom.dcmread(chest_cr_path(), stop_before_pixels=True)


@pytest.fixture(scope="module")
def written(source: pydicom.Dataset) -> pydicom.Dataset:
    """The SR as a PACS receives it: written to bytes and read back."""
    buffer = io.BytesIO()
    report_sr(source, FINDINGS, IMPRESSION).save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def texts(item: pydicom.Dataset) -> dict[str, str]:
    """Concept meaning → text of every TEXT item under ``item``."""
    found = {}
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT":
            found[child.ConceptNameCodeSequence[0].CodeMeaning] = child.TextValue
        found |= texts(child)
    return found


def test_sr_is_in_the_source_study_as_a_new_unverified_series(source, written):
    assert written.SOPClassUID == pydicom.uid.ComprehensiveSRStorage and written.Modality == "SR"
    assert written.StudyInstanceUID == source.StudyInstanceUID and written.PatientID == source.PatientID
    assert written.SeriesInstanceUID != source.SeriesInstanceUID
    assert written.CompletionFlag == "PARTIAL" and written.VerificationFlag == "UNVERIFIED"
    assert written.ConceptNameCodeSequence[0].CodeValue == "18748-4"  # LOINC Diagnostic Imaging Report
    assert written.ContentTemplateSequence[0].TemplateIdentifier == "2000"


def test_sr_holds_findings_and_impression_and_references_the_source(source, written):
    assert texts(written) == {"Finding": FINDINGS, "Impression": IMPRESSION}
    findings = next(c for c in written.ContentSequence if c.ValueType == "CONTAINER"
                    and c.ConceptNameCodeSequence[0].CodeMeaning == "Findings")
    image = findings.ContentSequence[0].ContentSequence[0]
    assert image.ValueType == "IMAGE" and image.RelationshipType == "INFERRED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert image.ReferencedSOPSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    evidence = written.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_sr_needs_both_texts(source):
    with pytest.raises(ValueError, match="findings and an impression"):
        report_sr(source, FINDINGS, "  ")


def test_sr_passes_dciodvfy(written, tmp_path: Path):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian: apt-get install dicom3tools; `make pacs-tools`)")
    path = tmp_path / "sr.dcm"
    written.save_as(path, enforce_file_format=True)
    checked = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    output = checked.stdout + checked.stderr
    assert "ComprehensiveSR" in output  # it recognised the IOD
    assert [line for line in output.splitlines() if line.startswith("Error")] == []

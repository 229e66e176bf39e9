"""A machine-written report as a DICOM Comprehensive SR (highdicom), to go back into the PACS beside its image.

The content tree follows the outline of TID 2000 (Basic Diagnostic Imaging Report): a "Diagnostic Imaging
Report" container in English holding a Findings section and an Impressions section, each one TEXT item. The
finding text is INFERRED FROM an IMAGE item naming the source instance, and the source is also the SR's
evidence (Current Requested Procedure Evidence), so a viewer finds the image from the report. Patient and study
attributes come from the source (same study); the SR is a new series. It is PARTIAL and UNVERIFIED: a model
wrote it and no radiologist has signed it.
"""

from __future__ import annotations

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

MANUFACTURER = "MedStack"
SERIES_NUMBER = 990  # apart from the modality's own series numbers
_ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")


def _section(title: pydicom.sr.coding.Code, item: pydicom.sr.coding.Code, text: str,
             source: pydicom.Dataset | None = None) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(title, relationship_type="CONTAINS")
    entry = hd.sr.TextContentItem(item, text, relationship_type="CONTAINS")
    if source is not None:
        entry.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
            codes.DCM.SourceImageForImageProcessingOperation, source.SOPClassUID, source.SOPInstanceUID,
            relationship_type="INFERRED FROM")])
    section.ContentSequence = hd.sr.ContentSequence([entry])
    return section


def report_sr(source: pydicom.Dataset, findings: str, impression: str,
              series_description: str = "MedStack report (unverified)") -> hd.sr.ComprehensiveSR:
    """The SR of a report on ``source`` (a DICOM image: its header is enough): ``findings`` and ``impression``
    are plain text; neither may be empty."""
    if not findings.strip() or not impression.strip():
        raise ValueError("an SR needs both a findings and an impression text")
    root = hd.sr.ContainerContentItem(codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = hd.sr.ContentSequence([
        *hd.sr.LanguageOfContentItemAndDescendants(_ENGLISH),
        _section(codes.DCM.Findings, codes.DCM.Finding, findings, source),
        _section(codes.DCM.Impressions, codes.DCM.Impression, impression),
    ])
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=root, series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=False,
        is_final=False, is_verified=False, series_description=series_description)

"""The generated report as a FHIR R4 ``DiagnosticReport``, validated with ``fhir.resources``.

fhir.resources 8.x models R5 at its top level and R4B (4.3.0, the R4 technical correction; DiagnosticReport
is unchanged from 4.0.1) under ``fhir.resources.R4B``: we validate against R4B.

The report is ``preliminary`` (machine-written, for a radiologist to verify), coded LOINC 18748-4
"Diagnostic imaging study" with category RAD; each finding is a contained ``Observation`` (probability
as a unitless quantity) referenced from ``result``; the text is the ``conclusion`` and a base64
``presentedForm``; the model's name, version and sha256 are a contained ``Device`` named in an extension
and in ``meta.source``. No patient identifiers are included.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

LOINC = "http://loinc.org"
PROVENANCE_EXTENSION = "https://medstack.example/fhir/StructureDefinition/generated-by-device"
FINDING_SYSTEM = "https://medstack.example/fhir/CodeSystem/report-findings"


def diagnostic_report(text: str, findings: dict[str, float], model: dict[str, str], indication: str | None = None,
                      view: str | None = None, threshold: float = 0.5,
                      issued: datetime | None = None) -> dict[str, Any]:
    """A validated DiagnosticReport as a JSON-ready dict (raises ``ValueError`` if it does not validate)."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    issued = issued or datetime.now(UTC)
    device = {
        "resourceType": "Device", "id": "model",
        "deviceName": [{"name": f"{model.get('name', '')} v{model.get('version', '')}", "type": "model-name"}],
        "version": [{"value": str(model.get("version", ""))}],
        "identifier": [{"system": "urn:ietf:rfc:6920", "value": f"sha-256;{model.get('sha256', '')}"}],
    }
    observations = []
    for i, (name, probability) in enumerate(findings.items()):
        observations.append({
            "resourceType": "Observation", "id": f"finding-{i}", "status": "preliminary",
            "code": {"coding": [{"system": FINDING_SYSTEM, "code": name}], "text": name.replace("_", " ")},
            "valueQuantity": {"value": round(float(probability), 4), "unit": "probability",
                              "system": "http://unitsofmeasure.org", "code": "1"},
            "interpretation": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                "code": "POS" if probability >= threshold else "NEG"}]}],
            "device": {"reference": "#model"},
        })
    resource = {
        "resourceType": "DiagnosticReport",
        "id": str(uuid.uuid4()),
        "meta": {"source": f"{model.get('name', '')}/{model.get('version', '')}"},
        "extension": [{"url": PROVENANCE_EXTENSION, "valueReference": {"reference": "#model"}}],
        "contained": [device, *observations],
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD",
                                  "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
                 "text": f"Chest X-ray{f' ({view})' if view else ''}"},
        "issued": issued.isoformat(),
        "result": [{"reference": f"#{o['id']}", "display": o["code"]["text"]} for o in observations],
        "conclusion": text,
        "presentedForm": [{"contentType": "text/plain; charset=utf-8", "language": "en",
                           "data": base64.b64encode(text.encode()).decode(), "title": "Generated report"}],
    }
    if indication:
        resource["extension"].append({"url": "https://medstack.example/fhir/StructureDefinition/indication",
                                      "valueString": indication})
    validated = DiagnosticReport.model_validate(resource)
    return validated.model_dump(mode="json", exclude_none=True)

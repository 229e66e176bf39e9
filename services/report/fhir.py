"""The generated report as a FHIR R4 ``DiagnosticReport``, validated with ``fhir.resources``.

fhir.resources 8.x models R5 at its top level and R4B (4.3.0, the R4 technical correction; DiagnosticReport
is unchanged from 4.0.1) under ``fhir.resources.R4B``: we validate against R4B.

The report is ``preliminary`` (machine-written, for a radiologist to verify), coded LOINC 18748-4
"Diagnostic imaging study" with category RAD; each finding is a contained ``Observation`` referenced from
``result``: its code, the probability as a unitless ``valueQuantity``, the calibrated threshold as a
``component``, and ``interpretation`` POS (present), NEG (absent) or IND (the finding head is not validated,
services/report/consistency.py). The generated text is the ``conclusion`` and a base64 ``presentedForm``; the
present findings are ``conclusionCode``; the consistency guard's verdict and the input check (in distribution,
research override) are extensions. The model's name, version and sha256 are a contained ``Device`` named in an
extension and in ``meta.source``. No patient identifiers are included.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

LOINC = "http://loinc.org"
PROVENANCE_EXTENSION = "https://medstack.example/fhir/StructureDefinition/generated-by-device"
FINDING_SYSTEM = "https://medstack.example/fhir/CodeSystem/report-findings"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
CONSISTENCY_EXTENSION = "https://medstack.example/fhir/StructureDefinition/text-findings-consistency"
INPUT_EXTENSION = "https://medstack.example/fhir/StructureDefinition/input-check"
_CALLS = {True: ("POS", "Positive"), False: ("NEG", "Negative"), None: ("IND", "Indeterminate")}
_UCUM = {"unit": "probability", "system": "http://unitsofmeasure.org", "code": "1"}


def _finding(name: str) -> dict[str, Any]:
    return {"coding": [{"system": FINDING_SYSTEM, "code": name, "display": name.replace("_", " ")}],
            "text": name.replace("_", " ")}


def observation(i: int, name: str, probability: float, threshold: float, present: bool | None) -> dict[str, Any]:
    """One finding: code, probability, calibrated threshold (component) and present / absent / indeterminate."""
    code, display = _CALLS[present]
    resource: dict[str, Any] = {
        "resourceType": "Observation", "id": f"finding-{i}", "status": "preliminary",
        "code": _finding(name),
        "valueQuantity": {"value": round(float(probability), 4), **_UCUM},
        "interpretation": [{"coding": [{"system": INTERPRETATION, "code": code, "display": display}]}],
        "component": [{"code": {"coding": [{"system": FINDING_SYSTEM, "code": "decision-threshold"}],
                                "text": "decision threshold (calibrated on the validation split)"},
                       "valueQuantity": {"value": round(float(threshold), 4), **_UCUM}}],
        "device": {"reference": "#model"},
    }
    if present is None:
        from services.report.consistency import MIN_AUROC

        resource["note"] = [{"text": f"the finding head is not validated for this finding (validation AUROC below "
                                     f"{MIN_AUROC}): the probability is reported, not called present or absent"}]
    return resource


def _consistency_extension(consistency: dict[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "ok", "valueBoolean": bool(consistency.get("ok", True))}]
    for key in ("missing", "contradicted", "unsupported"):
        parts += [{"url": key, "valueCode": name} for name in consistency.get(key, [])]
    return {"url": CONSISTENCY_EXTENSION, "extension": parts}


def _input_extension(check: dict[str, Any]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"url": "override", "valueBoolean": bool(check.get("override", False))}]
    if check.get("in_distribution") is not None:
        parts.append({"url": "in-distribution", "valueBoolean": bool(check["in_distribution"])})
    parts += [{"url": "reason", "valueString": reason} for reason in check.get("reasons", [])]
    return {"url": INPUT_EXTENSION, "extension": parts}


def diagnostic_report(text: str, findings: dict[str, float], model: dict[str, str], indication: str | None = None,
                      view: str | None = None, threshold: float = 0.5, issued: datetime | None = None,
                      calls: list[dict[str, Any]] | None = None, consistency: dict[str, Any] | None = None,
                      input_check: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated DiagnosticReport as a JSON-ready dict (raises ``ValueError`` if it does not validate).

    ``calls`` (each ``name``, ``probability``, ``threshold``, ``present``; services/report/consistency.py) set
    every Observation's threshold and interpretation; without them each finding is called at ``threshold``."""
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    issued = issued or datetime.now(UTC)
    device = {
        "resourceType": "Device", "id": "model",
        "deviceName": [{"name": f"{model.get('name', '')} v{model.get('version', '')}", "type": "model-name"}],
        "version": [{"value": str(model.get("version", ""))}],
        "identifier": [{"system": "urn:ietf:rfc:6920", "value": f"sha-256;{model.get('sha256', '')}"}],
    }
    if calls is None:
        calls = [{"name": n, "probability": p, "threshold": threshold, "present": p >= threshold}
                 for n, p in findings.items()]
    observations = [observation(i, c["name"], c["probability"], c["threshold"], c["present"])
                    for i, c in enumerate(calls)]
    present = [c["name"] for c in calls if c["present"] and c["name"] != "normal"]
    if not present and any(c["name"] == "normal" and c["present"] for c in calls):
        present = ["normal"]
    extensions: list[dict[str, Any]] = [{"url": PROVENANCE_EXTENSION, "valueReference": {"reference": "#model"}}]
    if consistency is not None:
        extensions.append(_consistency_extension(consistency))
    if input_check is not None:
        extensions.append(_input_extension(input_check))
    resource = {
        "resourceType": "DiagnosticReport",
        "id": str(uuid.uuid4()),
        "meta": {"source": f"{model.get('name', '')}/{model.get('version', '')}"},
        "extension": extensions,
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
    if present:
        resource["conclusionCode"] = [_finding(name) for name in present]
    if indication:
        resource["extension"].append({"url": "https://medstack.example/fhir/StructureDefinition/indication",
                                      "valueString": indication})
    validated = DiagnosticReport.model_validate(resource)
    return validated.model_dump(mode="json", exclude_none=True)

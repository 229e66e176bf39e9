"""The report as FHIR (services/report/fhir.py): one Observation per finding (code, probability, calibrated
threshold, present / absent / indeterminate), the generated text as ``conclusion``, the checks as extensions —
validated with fhir.resources (R4B) — and the answer parts the gateway adds (services/report/serving.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from services.report import serving
from services.report.fhir import CONSISTENCY_EXTENSION, FINDING_SYSTEM, INPUT_EXTENSION, diagnostic_report
from services.report.findings import FINDINGS
from services.report.ood import Scope

MODEL = {"name": "report_generate", "version": "2", "sha256": "cd" * 32}
TEXT = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."


def cr_calls() -> list[dict]:
    probs = dict.fromkeys(FINDINGS, 0.02) | {"pleural_effusion": 0.94, "nodule_mass": 0.80}
    present = {n: (p >= 0.5) for n, p in probs.items()} | {"nodule_mass": None, "fracture": None}
    return [{"name": n, "probability": probs[n], "threshold": 0.5, "present": present[n]} for n in FINDINGS]


def test_one_observation_per_finding_with_probability_threshold_and_call() -> None:
    calls = cr_calls()
    report = diagnostic_report(TEXT, {c["name"]: c["probability"] for c in calls}, MODEL, calls=calls,
                               issued=datetime(2025, 1, 2, tzinfo=UTC))
    parsed = DiagnosticReport.model_validate(report)
    assert parsed.conclusion == TEXT and parsed.status == "preliminary"
    observations = [c for c in report["contained"] if c["resourceType"] == "Observation"]
    assert [o["code"]["coding"][0]["code"] for o in observations] == list(FINDINGS)
    assert [r["reference"] for r in report["result"]] == [f"#{o['id']}" for o in observations]
    for o in observations:
        Observation.model_validate(o)  # each one is a valid R4B Observation on its own
        assert o["code"]["coding"][0]["system"] == FINDING_SYSTEM
        assert o["valueQuantity"]["code"] == "1" and 0 <= o["valueQuantity"]["value"] <= 1
        assert o["component"][0]["code"]["coding"][0]["code"] == "decision-threshold"
        assert o["component"][0]["valueQuantity"]["value"] == 0.5
    codes = {o["code"]["coding"][0]["code"]: o["interpretation"][0]["coding"][0]["code"] for o in observations}
    assert codes["pleural_effusion"] == "POS" and codes["cardiomegaly"] == "NEG"
    assert codes["nodule_mass"] == "IND" and codes["fracture"] == "IND"
    nodule = next(o for o in observations if o["code"]["coding"][0]["code"] == "nodule_mass")
    assert "not validated" in nodule["note"][0]["text"]
    assert [c["coding"][0]["code"] for c in report["conclusionCode"]] == ["pleural_effusion"]


def test_checks_are_extensions() -> None:
    calls = cr_calls()
    consistency = {"ok": False, "missing": ["pleural_effusion"], "contradicted": ["opacity_consolidation"]}
    check = {"override": True, "in_distribution": False, "reasons": ["BodyPartExamined is 'EXTREMITY', not CHEST"]}
    report = diagnostic_report(TEXT, {}, MODEL, calls=calls, consistency=consistency, input_check=check)
    DiagnosticReport.model_validate(report)
    ext = {e["url"]: e for e in report["extension"]}
    parts = [(x["url"], next(v for k, v in x.items() if k.startswith("value")))
             for x in ext[CONSISTENCY_EXTENSION]["extension"]]
    assert parts == [("ok", False), ("missing", "pleural_effusion"), ("contradicted", "opacity_consolidation")]
    inputs = [(x["url"], next(v for k, v in x.items() if k.startswith("value")))
              for x in ext[INPUT_EXTENSION]["extension"]]
    assert inputs == [("override", True), ("in-distribution", False),
                      ("reason", "BodyPartExamined is 'EXTREMITY', not CHEST")]


def test_without_calls_the_old_signature_still_calls_at_the_threshold() -> None:
    report = diagnostic_report("Small left effusion.", {"pleural_effusion": 0.6, "normal": 0.2}, MODEL,
                               threshold=0.7)
    obs = [c for c in report["contained"] if c["resourceType"] == "Observation"]
    assert [o["interpretation"][0]["coding"][0]["code"] for o in obs] == ["NEG", "NEG"]
    assert "conclusionCode" not in report


def test_normal_is_the_conclusion_code_when_nothing_else_is_present() -> None:
    calls = [{"name": n, "probability": 0.9 if n == "normal" else 0.1, "threshold": 0.5,
              "present": n == "normal"} for n in FINDINGS]
    report = diagnostic_report(TEXT, {}, MODEL, calls=calls)
    assert [c["coding"][0]["code"] for c in report["conclusionCode"]] == ["normal"]


def test_report_parts_for_the_real_cr_case() -> None:
    """What the gateway adds to the text: thresholds and calls, the guard, the input check, warnings."""
    from services.report.cr import chest_cr_path
    from services.report.images import preprocess, read_image

    probs = dict.fromkeys(FINDINGS, 0.02) | {"pleural_effusion": 0.94, "nodule_mass": 0.80}
    image = preprocess(read_image(chest_cr_path().read_bytes())[0])
    parts = serving.report_parts(TEXT, probs, image, Scope("CHEST", "PA", "CR", (), header=True))
    findings = {f["name"]: f for f in parts["findings"]}
    assert findings["pleural_effusion"]["present"] is True and findings["nodule_mass"]["present"] is None
    assert parts["consistency"]["ok"] is False and parts["consistency"]["missing"] == ["pleural_effusion"]
    # a real radiograph is unlike the rendered training images: marked, not refused
    assert parts["in_distribution"] is False and parts["input_check"]["chest_radiograph"] is True
    assert parts["input_check"]["override"] is False
    assert any("pleural effusion" in w for w in parts["warnings"])
    assert any("unlike the training images" in w for w in parts["warnings"])
    calls_fhir = diagnostic_report(TEXT, probs, MODEL, calls=parts["findings"], consistency=parts["consistency"],
                                   input_check=parts["input_check"])
    DiagnosticReport.model_validate(calls_fhir)


@pytest.mark.parametrize("override", [False, True])
def test_report_parts_records_the_override_only_when_it_was_needed(override: bool) -> None:
    scope = Scope("EXTREMITY", "PA", "CR", ("BodyPartExamined is 'EXTREMITY', not CHEST",), header=True)
    parts = serving.report_parts(TEXT, dict.fromkeys(FINDINGS, 0.01), np.zeros((1, 1, 128, 128), np.float32),
                                 scope, override)
    assert parts["input_check"]["override"] is override
    assert any("research override" in w for w in parts["warnings"]) is override
    chest = serving.report_parts(TEXT, dict.fromkeys(FINDINGS, 0.01), np.zeros((1, 1, 128, 128), np.float32),
                                 Scope(header=True), override)
    assert chest["input_check"]["override"] is False

"""The consistency guard (services/report/consistency.py): structured findings with calibrated thresholds, and the
rules that compare them with the text — mentions read by the same rule labeller that clinical efficacy uses."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.report import consistency, serving
from services.report.consistency import FindingCall, calibrate, check, read_text, structured
from services.report.findings import ABNORMAL, FINDINGS, label_text

CR_TEXT = "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear."


def calls(present: dict[str, bool | None]) -> list[FindingCall]:
    """Every finding absent (p 0.1, threshold 0.5) except those given."""
    out = []
    for name in FINDINGS:
        state = present.get(name, False)
        p = 0.9 if state else 0.1
        out.append(FindingCall(name, p, 0.5, state, state is not None))
    return out


def test_the_real_cr_text_flags_the_effusion_it_leaves_out() -> None:
    """The issue's case: normal template while the head sees an effusion (p 0.94) and a nodule (p 0.80)."""
    probs = dict.fromkeys(FINDINGS, 0.02) | {"pleural_effusion": 0.94, "nodule_mass": 0.80}
    table = {n: {"threshold": 0.5, "checked": n not in ("nodule_mass", "fracture")} for n in FINDINGS}
    result = check(CR_TEXT, structured(probs, table))
    assert not result.ok
    assert result.missing == ["pleural_effusion"] and result.contradicted == []
    assert result.unchecked == ["nodule_mass", "fracture"]  # the head is at chance: never a reason either way


@pytest.mark.parametrize(("text", "finding", "sentence"), [
    ("The heart is normal in size. The lungs are clear.", "opacity_consolidation", "the lungs are clear."),
    ("The heart is normal in size. The lungs are clear.", "cardiomegaly", "the heart is normal in size."),
    ("No pleural effusion or pneumothorax.", "pleural_effusion", "no pleural effusion or pneumothorax."),
    ("No pleural effusion or pneumothorax.", "pneumothorax", "no pleural effusion or pneumothorax."),
    ("There is no focal airspace consolidation.", "opacity_consolidation", "there is no focal airspace consolidation."),
    ("No acute bony abnormality.", "fracture", "no acute bony abnormality."),
    ("The costophrenic angles are sharp.", "pleural_effusion", "the costophrenic angles are sharp."),
])
def test_a_denied_present_finding_is_contradicted(text: str, finding: str, sentence: str) -> None:
    result = check(text, calls({finding: True}))
    assert result.contradicted == [finding] and result.missing == [] and not result.ok
    assert result.evidence[finding] == sentence


def test_a_mentioned_finding_is_consistent_even_beside_a_denial() -> None:
    text = "There is a small left pleural effusion. No right effusion. The heart is enlarged."
    result = check(text, calls({"pleural_effusion": True, "cardiomegaly": True}))
    assert result.ok and not (result.missing or result.contradicted or result.unsupported)


def test_a_named_finding_the_head_calls_absent_is_unsupported() -> None:
    result = check("The lungs are hyperexpanded. Small left pleural effusion.", calls({}))
    assert result.unsupported == ["pleural_effusion", "emphysema"] and not result.ok
    assert "effusion" in result.evidence["pleural_effusion"]


def test_an_unchecked_finding_never_makes_the_text_inconsistent() -> None:
    assert check("A 2 cm nodule in the right upper lobe.", calls({"nodule_mass": None})).ok
    assert check("The lungs are clear.", calls({"nodule_mass": None})).ok


def test_normal_text_and_absent_findings_agree() -> None:
    result = check(CR_TEXT, calls({"normal": True}))
    assert result.ok and result.as_dict()["missing"] == []


@pytest.mark.parametrize("text", [
    CR_TEXT, "the lungs are hyperexpanded . there is no focal airspace consolidation . no pleural effusion or "
    "pneumothorax . there are mild degenerative changes of the spine .",
    "Mild cardiomegaly. Right basilar atelectasis, no pneumothorax. Sternotomy wires.",
    "There is no evidence of pneumothorax, but a small effusion is seen on the left.",
])
def test_mentions_are_the_evaluation_labellers(text: str) -> None:
    """"Mentioned" is exactly ``label_text``: what clinical efficacy counts as a named finding."""
    affirmed, _, _ = read_text(text)
    assert affirmed == {n for n in ABNORMAL if label_text(text)[n]}


def test_messages_say_what_is_wrong_in_words() -> None:
    c = calls({"pleural_effusion": True, "opacity_consolidation": True})
    result = check("The lungs are clear.", c)
    text = " ".join(result.messages(c))
    assert "does not mention pleural effusion (p 0.90 ≥ 0.50)" in text
    assert 'denies opacity consolidation (p 0.90 ≥ 0.50): "the lungs are clear."' in text


def test_f1_threshold_separates_separable_scores() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1.0])
    t = consistency.f1_threshold(probs, labels)
    assert 0.3 < t <= 0.7 and abs(t - 0.505) < 0.01  # the middle of the tied maxima 0.31 … 0.70
    assert consistency.bagged_threshold(probs, labels) == consistency.bagged_threshold(probs, labels)


def test_calibrate_rules() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = np.zeros((n, len(FINDINGS)))
    probs = rng.uniform(0, 0.6, (n, len(FINDINGS)))
    j_good, j_rare, j_chance = FINDINGS.index("pleural_effusion"), FINDINGS.index("pneumothorax"), \
        FINDINGS.index("fracture")
    labels[:40, j_good] = 1
    probs[:40, j_good] = rng.uniform(0.5, 1.0, 40)
    labels[:2, j_rare] = 1  # too few positives for F1: 99 % specificity on the negatives
    labels[::10, j_chance] = 1  # scores unrelated to labels: not checked
    out = calibrate(probs, labels)
    assert out["pleural_effusion"]["checked"] and 0.45 <= out["pleural_effusion"]["threshold"] <= 0.62
    assert out["pneumothorax"]["threshold"] == pytest.approx(np.quantile(probs[2:, j_rare], 0.99), abs=1e-3)
    assert "specificity" in out["pneumothorax"]["method"]
    assert not out["fracture"]["checked"]


def test_structured_uses_the_table() -> None:
    probs = dict.fromkeys(FINDINGS, 0.6)
    table = {n: {"threshold": 0.7 if n == "cardiomegaly" else 0.5, "checked": n != "fracture"} for n in FINDINGS}
    got = {c.name: c for c in structured(probs, table)}
    assert [c.name for c in structured(probs, table)] == list(FINDINGS)
    assert got["cardiomegaly"].present is False and got["pleural_effusion"].present is True
    assert got["fracture"].present is None and got["fracture"].threshold == 0.5


def test_committed_thresholds_belong_to_the_served_checkpoint() -> None:
    """thresholds.json comes from `python -m services.report.consistency` on this very checkpoint."""
    stored = json.loads(consistency.thresholds_path().read_text())
    sha = hashlib.sha256(serving.checkpoint_path().read_bytes()).hexdigest()
    assert stored["checkpoint_sha256"] == sha, "re-run `python -m services.report.consistency` after retraining"
    assert set(stored["findings"]) == set(FINDINGS)
    assert all(0 < f["threshold"] < 1 for f in stored["findings"].values())
    assert "validation" in stored["data"]
    loaded = consistency.load_thresholds()
    assert not loaded["fracture"]["checked"] and loaded["pleural_effusion"]["checked"]
    assert loaded["pleural_effusion"]["threshold"] < 0.94  # the real CR's effusion is called present

"""Negation-aware finding labeller, MeSH mapping, clinical-efficacy scoring, symptom-graph weights."""

from __future__ import annotations

import numpy as np
import pytest

from services.report.findings import FINDINGS, clinical_efficacy, from_mesh, label_text, to_vector
from services.report.graph import adjacency, ppmi
from services.report.reports import Vocabulary, clean, parse_report, pretty, split_of


def positives(text: str) -> set[str]:
    return {name for name, value in label_text(text).items() if value}


@pytest.mark.parametrize(("text", "expected"), [
    ("The heart is normal in size. The lungs are clear.", {"normal"}),
    ("Mild cardiomegaly. No pleural effusion or pneumothorax.", {"cardiomegaly"}),
    ("No focal consolidation, pneumothorax or effusion.", {"normal"}),
    ("Pneumothorax is not seen. Small left pleural effusion.", {"pleural_effusion"}),
    ("Left basilar opacity which may represent atelectasis.", {"opacity_consolidation", "atelectasis"}),
    ("There is no acute fracture. Old healed right rib fracture.", {"fracture"}),
    ("Left chest wall pacemaker with leads in the right ventricle.", {"support_devices"}),
    ("Heart size is enlarged but there is no effusion.", {"cardiomegaly"}),
    ("No pericardial effusion. Hyperexpanded lungs consistent with COPD.", {"emphysema"}),
    ("A 1 cm nodule in the right upper lobe.", {"nodule_mass"}),
    ("Without evidence of pneumothorax.", {"normal"}),
])
def test_labeller(text: str, expected: set[str]) -> None:
    assert positives(text) == expected


def test_mesh_mapping_uses_the_heading_before_the_slash() -> None:
    found = from_mesh(["Opacity/lung/base/left", "Cardiomegaly/mild", "Calcified Granuloma/lung"])
    assert {n for n, v in found.items() if v} == {"opacity_consolidation", "cardiomegaly"}
    assert from_mesh(["normal"])["normal"] and not any(from_mesh(["normal"])[n] for n in FINDINGS[1:])


def test_clinical_efficacy_counts_findings_not_words() -> None:
    refs = ["mild cardiomegaly . small left effusion .", "the lungs are clear ."]
    assert clinical_efficacy(refs, refs)["ce_f1"] == pytest.approx(1.0)
    half = clinical_efficacy(["the heart is enlarged .", "there is a small effusion ."], refs)
    assert half["ce_precision"] == pytest.approx(0.5) and half["ce_recall"] == pytest.approx(0.5)


def test_report_parsing_cleaning_and_vocabulary() -> None:
    xml = b"""<eCitation><uId id="CXR7"/><MedlineCitation><Article><Abstract>
      <AbstractText Label="FINDINGS">1. Heart size is normal. Lungs are clear, no effusion..</AbstractText>
      <AbstractText Label="IMPRESSION">Normal chest.</AbstractText></Abstract></Article></MedlineCitation>
      <MeSH><major>normal</major></MeSH></eCitation>"""
    report = parse_report(xml)
    assert report.uid == "CXR7" and report.mesh == ("normal",)
    assert report.text == "heart size is normal . lungs are clear no effusion ."
    assert to_vector(from_mesh(report.mesh))[0] == 1.0 and report.labels[0] == 1.0
    vocab = Vocabulary.build([report.text] * 3)
    ids = vocab.encode(report.text)
    assert ids[0] == 1 and ids[-1] == 2 and vocab.decode(ids) == report.text
    assert pretty(report.text) == "Heart size is normal. Lungs are clear no effusion."
    assert clean("A-B c!") == "a b c ."
    assert split_of("CXR7") == split_of("CXR7") and split_of("CXR7") in ("train", "val", "test")


def test_symptom_graph_weights() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, len(FINDINGS))) < 0.1).astype(np.float32)
    labels[:, 2] = np.maximum(labels[:, 2], labels[:, 1] * (rng.random(2000) < 0.8))  # effusion follows cardiomegaly
    weights = ppmi(labels)
    assert np.allclose(np.diag(weights), 0) and (weights >= 0).all()
    assert weights[1, 2] > 3 * weights[1, 5]
    a = adjacency(labels, labels[:500])
    assert np.allclose(a, a.T) and a.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels must be"):
        ppmi(np.zeros((4, 3)))

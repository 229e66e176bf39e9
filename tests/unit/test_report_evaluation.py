"""The report family's baselines and per-report statistics (services/report/evaluate.py): the bootstrapped
figures must be the module's own corpus metrics, and the baselines must draw on the training reports only."""

from __future__ import annotations

import numpy as np
import pytest

from services.report import evaluate
from services.report.findings import clinical_efficacy, label_text, to_vector
from services.report.metrics import bleu
from services.report.reports import Report

HYPOTHESES = [
    "the heart is normal in size . the lungs are clear .",
    "mild cardiomegaly . small left pleural effusion .",
    "the lungs are hyperexpanded . no pneumothorax .",
    "there is a right upper lobe opacity .",
    "",
]
REFERENCES = [
    "heart size is normal . the lungs are clear .",
    "the heart is enlarged . no pleural effusion .",
    "hyperexpanded lungs consistent with copd . there is a small pneumothorax .",
    "the lungs are clear .",
    "cardiomegaly .",
]


def test_bleu_from_per_report_statistics_is_the_corpus_bleu() -> None:
    stats = evaluate.bleu_statistics(HYPOTHESES, REFERENCES)
    expected = bleu(HYPOTHESES, REFERENCES)
    for n in range(1, 5):
        assert evaluate.corpus_bleu(stats.sum(0), n) == pytest.approx(expected[n - 1], rel=1e-12)


def test_micro_f1_from_per_report_statistics_is_clinical_efficacy() -> None:
    stats = evaluate.ce_statistics(HYPOTHESES, REFERENCES)
    assert stats.shape == (5, 3)
    assert float(evaluate.micro_f1(stats.sum(0))) == pytest.approx(clinical_efficacy(HYPOTHESES, REFERENCES)["ce_f1"])
    assert float(evaluate.micro_f1(np.zeros(3))) == 0.0


def test_paired_bootstrap_of_a_corpus_figure() -> None:
    rng = np.random.default_rng(1)
    ours = np.column_stack([rng.integers(1, 3, 60), np.zeros(60), rng.integers(0, 2, 60)]).astype(float)
    worse = ours.copy()
    worse[:, 0], worse[:, 2] = 0, ours[:, 0] + ours[:, 2]  # every true positive missed
    low, high = evaluate.bootstrap_difference(ours, worse, evaluate.micro_f1, resamples=500)
    assert 0 < low <= high
    assert evaluate.bootstrap_difference(ours, ours, evaluate.micro_f1, resamples=200) == [0.0, 0.0]
    assert evaluate.bootstrap_difference(ours[:1], worse[:1], evaluate.micro_f1) is None
    comparison = evaluate.corpus_comparison("x", "micro F1", ours=ours, baseline=worse, statistic=evaluate.micro_f1,
                                            baseline_name="none", samples="60")
    assert comparison.ours_wins and comparison.baseline == 0.0


def _report(uid: str, text: str, mesh: tuple[str, ...]) -> Report:
    return Report(uid, text, "", mesh)


def test_constant_and_retrieval_baselines_use_training_reports() -> None:
    train = [
        _report("1", "The lungs are clear.", ("normal",)),
        _report("2", "Heart size normal. Lungs are clear.", ("normal",)),
        _report("3", "Heart size normal. Lungs are clear.", ("normal",)),
        _report("4", "Mild cardiomegaly.", ("Cardiomegaly/mild",)),
        _report("5", "Cardiomegaly.", ("Cardiomegaly",)),
        _report("6", "Mild cardiomegaly.", ("Cardiomegaly",)),
    ]
    assert evaluate.constant_report(train) == "heart size normal . lungs are clear ."
    reports = evaluate.combination_reports(train)
    assert reports == {(): "heart size normal . lungs are clear .", ("cardiomegaly",): "mild cardiomegaly ."}
    bank = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = evaluate.retrieved_reports(np.array([[0.1, 2.0], [3.0, 0.2]]), bank, [(), ("cardiomegaly",)], train)
    assert texts == ["mild cardiomegaly .", "heart size normal . lungs are clear ."]


def test_pixel_features_ignore_brightness_and_contrast() -> None:
    image = np.random.default_rng(0).integers(0, 120, (1, 128, 128)).astype(np.uint8)
    features = evaluate.pixel_features(np.concatenate([image, image * 2 + 5]))
    assert features.shape == (2, 1024)
    assert evaluate.nearest(features[1:], features[:1])[0] == 0
    np.testing.assert_allclose(features[0], features[1], atol=1e-4)


def test_head_text_disagreement_counts_contradictions() -> None:
    texts = ["the lungs are clear .", "mild cardiomegaly ."]
    probs = np.zeros((2, 10))
    probs[0, 2] = 0.9  # head: effusion; text: nothing
    assert to_vector(label_text(texts[1]))[1] == 1.0
    found = evaluate.head_text_disagreement(texts, probs)
    assert found["images_head_positive_text_silent"] == 1
    assert found["images_text_names_head_negative"] == 1
    assert found["per_finding_head_positive_text_silent"]["pleural_effusion"] == 1

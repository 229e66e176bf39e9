"""The report family's baselines and per-report statistics (services/report/evaluate.py): the bootstrapped
figures must be the module's own corpus metrics, and the baselines must draw on the training reports only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from services.report import evaluate
from services.report.findings import clinical_efficacy, label_text
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


def test_retrieval_by_predicted_findings_takes_the_combination_or_its_nearest() -> None:
    combos = {(): "normal .", ("cardiomegaly",): "big heart .", ("cardiomegaly", "pleural_effusion"): "both ."}
    counts = Counter({(): 10, ("cardiomegaly",): 3, ("cardiomegaly", "pleural_effusion"): 1})
    assert evaluate.findings_report(("cardiomegaly",), combos, counts) == "big heart ."
    # no training report has effusion alone: the combination sharing the most (Jaccard 1/2) wins
    assert evaluate.findings_report(("pleural_effusion",), combos, counts) == "both ."
    # a tie in overlap goes to the more frequent combination
    assert evaluate.findings_report(("emphysema",), combos, counts) == "normal ."


def test_template_generator_drops_the_normal_sentences_a_finding_denies() -> None:
    train = [
        _report("1", "The heart is normal in size. The lungs are clear.", ("normal",)),
        _report("2", "The heart is enlarged. The lungs are clear.", ("Cardiomegaly",)),
        _report("3", "The heart is enlarged.", ("Cardiomegaly",)),
        _report("4", "Cardiomegaly with small left pleural effusion.", ("Cardiomegaly", "Pleural Effusion")),
        _report("5", "There is a small left pleural effusion.", ("Pleural Effusion",)),
    ]
    fixed = evaluate.finding_sentences(train)
    assert fixed == {"cardiomegaly": "the heart is enlarged .", "pleural_effusion": "there is a small left pleural "
                     "effusion ."}  # the two-finding sentence is nobody's template
    normal = evaluate.constant_report(train)
    assert evaluate.template_report((), normal, fixed) == normal
    text = evaluate.template_report(("cardiomegaly", "pleural_effusion"), normal, fixed)
    assert text == "the lungs are clear . the heart is enlarged . there is a small left pleural effusion ."
    assert label_text(text)["cardiomegaly"] and label_text(text)["pleural_effusion"]


def test_bootstrap_over_seeds_is_the_mean_of_the_seeds_figures() -> None:
    rng = np.random.default_rng(2)
    seeds = np.stack([np.column_stack([rng.integers(0, 3, 50), rng.integers(0, 2, 50), rng.integers(0, 2, 50)])
                      for _ in range(3)]).astype(float)
    expected = np.mean([evaluate.micro_f1(s.sum(0)) for s in seeds])
    assert evaluate.seed_mean(seeds, evaluate.micro_f1) == pytest.approx(expected)
    assert evaluate.seed_mean(seeds[0], evaluate.micro_f1) == pytest.approx(float(evaluate.micro_f1(seeds[0].sum(0))))
    # the same runs on both sides differ by nothing; one seed against itself as a stack of one as well
    assert evaluate.bootstrap_difference(seeds, seeds, evaluate.micro_f1, resamples=200) == [0.0, 0.0]
    assert evaluate.bootstrap_difference(seeds[:1], seeds[0], evaluate.micro_f1, resamples=200) == [0.0, 0.0]
    low, high = evaluate.bootstrap_difference(seeds, np.zeros_like(seeds[0]), evaluate.micro_f1, resamples=500)
    assert 0 < low <= expected <= high

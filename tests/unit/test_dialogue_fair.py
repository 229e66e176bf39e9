"""The fair-arms evaluation's corpus statistics (services/dialogue/fair_arms.py) equal metrics.py's figures."""

from __future__ import annotations

import math

import numpy as np

from services.dialogue import metrics
from services.dialogue.fair_arms import (
    bigram_incidence,
    bleu_from,
    bleu_stats,
    bootstrap_weights,
    entity_stats,
    f1_from,
)

HYPS = ["A doctor may suggest otoscopy.", "Try warm soups and plenty of fluids.", "You're welcome.", "",
        "otoscopy otoscopy"]
REFS = ["A doctor may suggest otoscopy and tympanometry.", "It may help to have warm soups.", "Take care.", "Hello.",
        "Useful examinations would be otoscopy."]
ENTITIES = ["otoscopy", "tympanometry", "warm soups", "plenty of fluids"]


def test_summed_turn_statistics_give_the_corpus_figures() -> None:
    b = np.array([bleu_stats(h, r) for h, r in zip(HYPS, REFS, strict=True)], dtype=float)
    assert math.isclose(float(bleu_from(b.sum(0))), metrics.bleu(HYPS, REFS, 2), rel_tol=1e-9)
    assert float(bleu_from(b[2:4].sum(0))) == metrics.bleu(HYPS[2:4], REFS[2:4], 2) == 0.0
    e = np.array([entity_stats(h, r, ENTITIES) for h, r in zip(HYPS, REFS, strict=True)], dtype=float)
    assert math.isclose(float(f1_from(e.sum(0))), metrics.entity_f1(HYPS, REFS, ENTITIES))
    present, counts = bigram_incidence(HYPS, {})
    assert math.isclose(present.max(0).sum() / counts.sum(), metrics.distinct(HYPS, 2))


def test_bootstrap_weights_are_resamples_with_replacement() -> None:
    w = bootstrap_weights(7, resamples=50)
    assert w.shape == (50, 7) and (w.sum(1) == 7).all()
    assert (w == bootstrap_weights(7, resamples=50)).all()  # seeded
    # a resample's corpus BLEU equals metrics.bleu on the resampled turns
    b = np.array([bleu_stats(h, r) for h, r in zip(HYPS, REFS, strict=True)], dtype=float)
    row = bootstrap_weights(len(HYPS), resamples=3)[1]
    picked = [i for i in range(len(HYPS)) for _ in range(int(row[i]))]
    expected = metrics.bleu([HYPS[i] for i in picked], [REFS[i] for i in picked], 2)
    assert math.isclose(float(bleu_from(row @ b)), expected, rel_tol=1e-9, abs_tol=1e-12)


def test_fair_training_prompts_differ_only_by_the_instruction_line() -> None:
    from services.dialogue import corpus
    from services.dialogue.train_generator import prompts_for

    turns = [t for t in corpus.examples(corpus.generate(n=60, seed=0), "train") if t["knowledge"]][:20]
    with_, without = prompts_for(turns, True, None), prompts_for(turns, False, None)
    for t, a, b in zip(turns, with_, without, strict=True):
        line = "\nInstruction: " + core_instruction(t)
        assert line in a and a.replace(line, "") == b
        assert "Knowledge: " + t["knowledge"][0] in b  # the same (gold) fact in both arms


def core_instruction(turn: dict) -> str:
    from services.dialogue import core

    return core.instruction_text(turn["type"], turn["action"], turn["field"])

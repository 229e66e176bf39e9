"""Dialogue metrics on hand-checked cases."""

from __future__ import annotations

import math

from services.dialogue import metrics


def test_bleu_rouge_distinct() -> None:
    assert metrics.bleu(["the cat sat"], ["the cat sat"], 2) == 1.0
    # 2/3 unigrams, 1/2 bigrams, equal lengths
    assert math.isclose(metrics.bleu(["a b c"], ["a b d"], 2), math.sqrt(2 / 3 * 1 / 2))
    assert metrics.bleu(["x y"], ["a b"], 1) == 0.0
    assert math.isclose(metrics.rouge_l(["a b c d"], ["a c d"]), 2 * (3 / 4) * 1 / (3 / 4 + 1))
    assert math.isclose(metrics.distinct(["a a b"], 1), 2 / 3)
    assert metrics.distinct(["a b a b"], 2) == 2 / 3


def test_entity_f1_and_macro_f1() -> None:
    kb = {"conditions": [{"name": "acute sinusitis", "symptoms": ["a blocked nose"],
                          "examinations": ["nasal endoscopy"],
                          "medications": ["a steroid nasal spray"], "diet_recommended": ["warm fluids"],
                          "diet_avoid": ["alcohol"], "precautions": ["rest"], "clinic": "ENT clinic"}]}
    entities = metrics.kb_entities(kb)
    assert metrics.entities_in("Try a steroid nasal spray, avoid alcohol.", entities) == {"a steroid nasal spray",
                                                                                         "alcohol"}
    f1 = metrics.entity_f1(["a steroid nasal spray and alcohol"], ["a steroid nasal spray and nasal endoscopy"],
                           entities)
    assert math.isclose(f1, 2 * 1 / (2 * 1 + 1 + 1))
    assert metrics.macro_f1(["a", "a", "b"], ["a", "b", "b"]) == (2 / 3 + 2 / 3) / 2

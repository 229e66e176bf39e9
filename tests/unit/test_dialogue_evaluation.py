"""The per-turn scores and the majority baseline that `medstack evaluate dialogue` compares with."""

from __future__ import annotations

import math

import numpy as np

from services.dialogue import core, metrics
from services.dialogue.evaluate import entity_recall, instruction_summary, majority_labels, turn_scores

KB = {"conditions": [{"name": "acute sinusitis", "symptoms": ["a blocked nose"], "examinations": ["nasal endoscopy"],
                      "medications": ["a steroid nasal spray"], "diet_recommended": ["warm fluids"],
                      "diet_avoid": ["alcohol"], "precautions": ["rest"], "clinic": "ENT clinic"}]}


def test_entity_recall_counts_the_reference_entities_named() -> None:
    entities = metrics.kb_entities(KB)
    reference = "Try a steroid nasal spray and avoid alcohol."
    assert entity_recall("A steroid nasal spray may help.", reference, entities) == 0.5
    assert entity_recall("Avoid alcohol; a steroid nasal spray.", reference, entities) == 1.0
    assert entity_recall("Glad to help.", reference, entities) == 0.0
    assert math.isnan(entity_recall("Alcohol.", "You're welcome.", entities))  # nothing to recall


def test_turn_scores_average_to_the_corpus_rouge_l() -> None:
    entities = metrics.kb_entities(KB)
    hyps, refs = ["a b c d", "x y", "the cat sat"], ["a c d", "a b", "the cat sat"]
    per_turn = [turn_scores(h, r, entities) for h, r in zip(hyps, refs, strict=True)]
    assert math.isclose(np.mean([s["rouge_l"] for s in per_turn]), metrics.rouge_l(hyps, refs))
    assert [s["bleu_1"] for s in per_turn][1:] == [0.0, 1.0]


def test_majority_labels_come_from_the_given_turns() -> None:
    turns = ([{"type": "chitchat", "action": "chitchat"}] * 3 + [{"type": "diagnosis", "action": "ask_symptom"}] * 2
             + [{"type": "diagnosis", "action": "inform_diagnosis"}] * 2)
    m = majority_labels(turns)
    assert core.TYPES[m["type"]] == "diagnosis"  # 4 diagnosis turns against 3 chit-chat
    assert core.ACTION_NAMES[m["action"]] == "chitchat"
    assert (core.TYPES[m["pair_type"]], core.ACTION_NAMES[m["pair_action"]]) == ("chitchat", "chitchat")


def test_instruction_summary() -> None:
    o = {"type": np.array([0, 0, 1, 4]), "type_pred": np.array([0, 1, 1, 4]),
         "action": np.array([0, 1, 2, 9]), "action_pred": np.array([0, 1, 3, 9])}
    s = instruction_summary(o)
    assert s["type_accuracy"] == 0.75 and s["action_accuracy"] == 0.75 and s["joint_accuracy"] == 0.5

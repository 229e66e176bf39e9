"""The action-adherence judge (services/dialogue/adherence.py) on the corpus's own doctor turns."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from services.dialogue import core, corpus
from services.dialogue.adherence import Judge


@pytest.fixture(scope="module")
def judge_and_turns() -> tuple[Judge, dict[str, list[dict]]]:
    data = corpus.generate(n=600, seed=0)
    return Judge(corpus.load_kb()), {s: corpus.examples(data, s) for s in ("train", "test")}


@pytest.mark.parametrize("split", ["train", "test"])
def test_gold_replies_adhere_to_their_own_action(judge_and_turns, split: str) -> None:
    judge, turns = judge_and_turns
    by_action: dict[str, list[bool]] = defaultdict(list)
    for t in turns[split]:
        by_action[t["action"]].append(judge.adheres(t["action"], t["text"]))
    assert set(by_action) == set(core.ACTION_NAMES)
    for action, ok in by_action.items():
        assert sum(ok) / len(ok) >= 0.98, (split, action, sum(ok) / len(ok))


def test_gold_replies_rarely_adhere_to_another_action(judge_and_turns) -> None:
    judge, turns = judge_and_turns
    rng = random.Random(0)
    wrong = [judge.adheres(rng.choice([a for a in core.ACTION_NAMES if a != t["action"]]), t["text"])
             for t in turns["test"]]
    assert sum(wrong) / len(wrong) <= 0.02


def test_rules_on_written_replies() -> None:
    judge = Judge(corpus.load_kb())
    assert judge.adheres("ask_symptom", "Do you also have muffled hearing?")
    assert not judge.adheres("ask_symptom", "You may have muffled hearing.")  # not a question
    assert judge.adheres("inform_diagnosis", "This may be acute otitis media.")
    assert not judge.adheres("inform_diagnosis", "Is it acute otitis media?")
    assert judge.adheres("recommend_examination", "An otoscopy would help.")
    assert judge.adheres("recommend_medicine", "Paracetamol can ease it.")
    assert judge.adheres("answer_avoid", "Please avoid very cold drinks.")
    assert not judge.adheres("recommend_diet", "Please avoid very cold drinks.")
    assert judge.adheres("explain_cause", "It is usually due to an infection.")
    assert judge.adheres("chitchat", "You're welcome. Take care.")
    assert not judge.adheres("chitchat", "An otoscopy would help.")
    assert not judge.adheres("recommend_examination", "You're welcome. Take care.")

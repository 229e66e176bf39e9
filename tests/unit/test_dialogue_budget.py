"""The dialogue prompt's token budget (issue #25, item 8): counted with the generator's own tokenizer.

A 4,000-digit message was ~4,000 prompt tokens; the budget keeps every prompt within
``core.PROMPT_TOKEN_BUDGET`` tokens, the newest patient words kept. No timing is asserted here
(docs/dialogue.md has the measurement and its command).
"""

from __future__ import annotations

import pytest

from services.dialogue import core, lm

INSTRUCTION = core.instruction_text("qa", "answer_avoid", "diet_avoid")
FACT = "GERD food to avoid: fatty meals; coffee; alcohol; chocolate"
ORDINARY = [
    {"role": "patient", "text": "Hello doctor."},
    {"role": "doctor", "text": "Hello, what brings you in today?"},
    {"role": "patient", "text": "I get heartburn after meals and a sour taste in my mouth."},
    {"role": "doctor", "text": "That sounds like it could be reflux. Do you cough at night?"},
    {"role": "patient", "text": "Yes, sometimes. What should I avoid eating?"},
]


@pytest.fixture(scope="module")
def count():
    tok = lm.tokenizer()
    return lambda text: len(tok.encode(text).ids)


def test_an_ordinary_turn_is_unchanged(count):
    budgeted = core.build_prompt(ORDINARY, INSTRUCTION, [FACT], count)
    assert budgeted == core.build_prompt(ORDINARY, INSTRUCTION, [FACT])
    report: dict = {}
    core.build_prompt(ORDINARY, INSTRUCTION, [FACT], count, report=report)
    assert report == {"prompt_tokens": count(budgeted), "utterances_dropped": 0, "message_trimmed": False,
                      "facts_dropped": 0}
    assert report["prompt_tokens"] < core.PROMPT_TOKEN_BUDGET / 2


def test_4000_digits_keep_to_the_budget_with_the_newest_digits(count):
    digits = "".join(str(i % 10) for i in range(4000))
    history = [*ORDINARY, {"role": "doctor", "text": "Anything else?"}, {"role": "patient", "text": digits}]
    assert count(core.build_prompt(history, INSTRUCTION, [FACT])) > 4000  # what the model used to get
    report: dict = {}
    prompt = core.build_prompt(history, INSTRUCTION, [FACT], count, report=report)
    assert count(prompt) <= core.PROMPT_TOKEN_BUDGET and report["prompt_tokens"] == count(prompt)
    assert report["message_trimmed"] and report["utterances_dropped"] == core.HISTORY_TURNS - 1
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert user.startswith("Patient: " + core.TRIMMED)
    kept = user.removeprefix("Patient: " + core.TRIMMED)
    assert digits.endswith(kept) and len(kept) > 100  # the newest words, as many as fit
    assert f"Instruction: {INSTRUCTION}" in prompt and FACT in prompt  # never trimmed away


def test_older_utterances_go_whole_before_the_newest_is_cut(count):
    long_question = "Is it serious if my stomach hurts after I eat spicy food late at night? " * 12
    history = [*ORDINARY, {"role": "patient", "text": long_question}]
    report: dict = {}
    prompt = core.build_prompt(history, INSTRUCTION, [FACT], count, budget=260, report=report)
    assert count(prompt) <= 260 and not report["message_trimmed"]
    assert long_question.strip() in prompt and report["utterances_dropped"] >= 1
    lines = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0].split("\n")
    older = [f"{core.speaker(t['role'])}: {t['text']}" for t in history[-core.HISTORY_TURNS:-1]]
    assert all(line in older for line in lines[:-1])  # whatever older line is kept is kept whole


def test_knowledge_is_bounded(count):
    facts = [FACT] * 40
    report: dict = {}
    prompt = core.build_prompt(ORDINARY, None, facts, count, report=report)
    knowledge = prompt.split("Knowledge: ", 1)[1].split("<|im_end|>", 1)[0]
    assert count(knowledge) <= core.KNOWLEDGE_TOKEN_BUDGET and report["facts_dropped"] > 0
    overlong = "Dry eye cause: " + "tear film instability " * 80
    knowledge = core.build_prompt(ORDINARY, None, [overlong], count).split("Knowledge: ", 1)[1].split("<|im_end|>")[0]
    assert overlong.startswith(knowledge) and count(knowledge) <= core.KNOWLEDGE_TOKEN_BUDGET


def test_any_counter_works_and_every_budget_holds():
    words = lambda text: len(text.split())  # noqa: E731 - a tokenizer-free counter
    message = " ".join(f"w{i}" for i in range(2000))
    for budget in (60, 120, 400):
        prompt = core.build_prompt([*ORDINARY, {"role": "patient", "text": message}], INSTRUCTION, [FACT], words,
                                   budget=budget)
        assert words(prompt) <= budget and "w1999" in prompt

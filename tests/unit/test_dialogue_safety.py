"""Red flags, the notice, and hedging of certainty claims (applied outside the model)."""

from __future__ import annotations

import pytest

from services.dialogue.safety import NOTICE, Hedger, hedge, red_flags, urgent_reply


@pytest.mark.parametrize(("text", "flag"), [
    ("I have chest pain and I'm short of breath", "chest pain with breathlessness"),
    ("Since this morning I suddenly lost vision in my left eye", "sudden vision loss"),
    ("I was vomiting blood this morning", "vomiting or coughing up blood"),
    ("I have a bad headache and a stiff neck", "headache with a stiff neck"),
    ("My lips are swollen after eating peanuts", "swelling of the lips"),
    ("My face is drooping and I have slurred speech", "possible stroke"),
    ("I suddenly can't hear anything in my right ear, I think I'm deaf", "sudden hearing loss"),
])
def test_red_flags_are_found(text: str, flag: str) -> None:
    found = red_flags(text)
    assert any(f.startswith(flag) or flag in f for f in found), found
    assert "emergency" in urgent_reply(found)


@pytest.mark.parametrize("text", ["I have a sore throat and a mild fever", "My eyes are itchy and red",
                                  "I have heartburn after meals", "My vision is a bit blurry when reading"])
def test_ordinary_complaints_are_not_red_flags(text: str) -> None:
    assert red_flags(text) == []


def test_certainty_is_hedged_and_streaming_matches_whole_text() -> None:
    text = "You definitely have acute sinusitis. I am sure of it, it will always clear up."
    assert hedge(text) == "You may have acute sinusitis. I think, it will often clear up."
    hedger = Hedger()
    pieces = ["You", " definitely", " have", " acute", " sinus", "itis.", " I", " am", " sure", " of", " it,",
              " it", " will", " always", " clear", " up."]
    streamed = "".join(hedger.push(p) for p in pieces) + hedger.flush()
    assert streamed == hedge(text)
    assert "not a diagnosis" in NOTICE

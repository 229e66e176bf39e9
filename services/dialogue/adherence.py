"""Action adherence: does a doctor reply do what its instruction's action said (rules, no model).

    python -m services.dialogue.adherence     # the judge on the corpus's own doctor turns (docs/dialogue.md)

The judge keys on **knowledge words**, not on the corpus's phrasing: for every knowledge-base field
it keeps, per entity (a symptom, an examination, a medicine, a clinic, a food, a precaution, a cause,
a condition name), the *distinctive* words — longer than three letters, in no doctor template of the
corpus (so "clinic", "doctor", "examination", … count for nothing) and in no entity of another field
("paracetamol for pain" keys on "paracetamol" alone). An entity with no such word ("skin
examination", "ear pain") is named only by its whole phrase; any other entity is *named* when at
least half of its distinctive words occur in the reply as whole words. Entities of every condition
count: the judge asks whether the reply performs the action (asks a symptom, recommends an
examination, …), not whether it picked the right condition — that is what knowledge-entity F1 measures.

Rules per action (``core.ACTIONS``):

=====================  ==============================================================================
ask_symptom            a question ("?") that names a symptom
inform_diagnosis       names a condition, and is not a question
recommend_examination  names an examination
recommend_medicine     names a medication
recommend_department   names a clinic (its specialty: ENT, eye, skin, digestive)
recommend_diet         names a recommended food, without an avoidance word
answer_avoid           names a food to avoid, with an avoidance word (avoid, cut down, stay away, …)
explain_cause          names a cause, or says one (cause(d/s), due to, because, result(s) of, comes from)
answer_precautions     names a precaution
chitchat               names no knowledge at all (no entity of any field, no cause word)
=====================  ==============================================================================

``tests/unit/test_dialogue_adherence.py`` checks it on the corpus's own doctor turns: the gold reply
adheres to its own action on every test-split turn, and rarely to another turn's action.
"""

from __future__ import annotations

import re
import string

from services.dialogue import core, corpus

_WORD = re.compile(r"[a-z]+")
AVOID = re.compile(r"\b(avoid\w*|cut (down|back)|stay away|steer clear|limit|reduce|skip|(do not|don't|not) "
                   r"(eat|drink|have))\b")
CAUSE = re.compile(r"\b(caus(e|ed|es|ing)|due to|because|results? (of|from)|comes? from|triggered|brought on)\b")
ENTITY_FIELDS = ("condition", "symptoms", "examinations", "medications", "clinic", "diet_recommended",
                 "diet_avoid", "precautions", "cause")
DOCTOR_TEMPLATES = (corpus.GREET_D, corpus.ASK, corpus.DIAGNOSE, corpus.EXAM, corpus.MED, corpus.DEP, corpus.DIET,
                    corpus.CAUSE, corpus.AVOID, corpus.CARE, corpus.COMFORT, corpus.BYE)


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _phrase(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _template_words() -> set[str]:
    fields = {f for t in DOCTOR_TEMPLATES for s in t for _, f, _, _ in string.Formatter().parse(s) if f}
    blank = dict.fromkeys(fields, "")
    return {w for t in DOCTOR_TEMPLATES for s in t for w in words(s.format(**blank))}


class Judge:
    """``Judge(kb).adheres(action, reply) -> bool``; ``actions(reply)``: every action the reply performs."""

    def __init__(self, kb: dict) -> None:
        raw: dict[str, list[str]] = {f: [] for f in ENTITY_FIELDS}
        for c in kb["conditions"]:
            for field in ENTITY_FIELDS:
                value = c["name"] if field == "condition" else c[field]
                raw[field] += value if isinstance(value, list) else [value]
        content = {f: [{w for w in words(v) if len(w) > 3} for v in values] for f, values in raw.items()}
        by_field = {f: set().union(*entities) for f, entities in content.items()}
        generic = _template_words()
        # field -> [(distinctive words, None)] or [(set(), the whole phrase)] for entities without one
        self.entities: dict[str, list[tuple[set[str], str | None]]] = {}
        for field, values in raw.items():
            elsewhere = set().union(*(ws for f, ws in by_field.items() if f != field))
            kept = []
            for value, e in zip(values, content[field], strict=True):
                own = e - generic - elsewhere
                # nothing of its own ("skin examination", "ear pain"): only the whole phrase counts
                kept.append((own, None) if own else (set(), _phrase(value)))
            self.entities[field] = [k for k in kept if k[0] or k[1]]

    def named(self, field: str, reply: str) -> bool:
        """Whether ``reply`` names an entity of ``field``: half of its distinctive words (at least one),
        or, for an entity without distinctive words, its whole phrase."""
        have, text = words(reply), f" {_phrase(reply)} "
        return any(2 * len(e & have) >= len(e) if e else f" {phrase} " in text for e, phrase in self.entities[field])

    def adheres(self, action: str, reply: str) -> bool:
        low = reply.lower()
        question = "?" in reply
        if action == "ask_symptom":
            return question and self.named("symptoms", reply)
        if action == "inform_diagnosis":
            return not question and self.named("condition", reply)
        if action == "recommend_diet":
            return self.named("diet_recommended", reply) and not AVOID.search(low)
        if action == "answer_avoid":
            return self.named("diet_avoid", reply) and bool(AVOID.search(low))
        if action == "explain_cause":
            return self.named("cause", reply) or bool(CAUSE.search(low))
        if action == "chitchat":
            return not CAUSE.search(low) and not any(self.named(f, reply) for f in ENTITY_FIELDS)
        field = core.ACTIONS[action][1]
        return self.named(field, reply)

    def actions(self, reply: str) -> list[str]:
        return [a for a in core.ACTION_NAMES if self.adheres(a, reply)]


def corpus_check(seed: int = 0) -> dict:
    """The judge on the corpus's own doctor turns: per split, the share adhering to their own action (per
    action and overall) and, judged against a random other action (seeded), the share adhering anyway."""
    import random

    from services.dialogue.train_generator import corpus_data

    data, judge = corpus_data(), Judge(corpus.load_kb())
    out = {}
    for split in ("train", "test"):
        turns = corpus.examples(data, split)
        own: dict[str, list[bool]] = {}
        for t in turns:
            own.setdefault(t["action"], []).append(judge.adheres(t["action"], t["text"]))
        rng = random.Random(seed)
        cross = [judge.adheres(rng.choice([a for a in core.ACTION_NAMES if a != t["action"]]), t["text"])
                 for t in turns]
        out[split] = {"turns": len(turns), "own_action": round(sum(map(sum, own.values())) / len(turns), 4),
                      "own_by_action": {a: round(sum(v) / len(v), 4) for a, v in own.items()},
                      "other_action": round(sum(cross) / len(cross), 4)}
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(corpus_check(), indent=1))  # noqa: T201 - CLI output

"""MidMed-style English consultation corpus: a seeded generator of mixed-type dialogues.

    python -m services.dialogue.corpus --out .cache/dialogue/corpus.json   # 4,000 dialogues, seed 0

Each dialogue follows one patient and one condition of the knowledge base through goal transitions
over the five MidMed dialogue types (diagnosis, recommendation, knowledge-grounded, QA, chit-chat).
Every doctor turn carries its instruction (type, action, target field), its slot values and the gold
knowledge fact. Splits are by condition: validation and test conditions never appear in training.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from services.dialogue import core

KB_PATH = Path(__file__).parent / "data" / "knowledge_base.json"
SPLIT_SEED = 7
PER_DEPARTMENT = {"test": 2, "validation": 1}


def load_kb() -> dict:
    return core.load_kb(str(KB_PATH))


def condition_splits(kb: dict) -> dict[str, str]:
    """condition id -> train / validation / test: per department, 2 conditions test, 1 validation."""
    rng = random.Random(SPLIT_SEED)
    split = {}
    for department in kb["departments"]:
        ids = sorted(c["id"] for c in kb["conditions"] if c["department"] == department)
        rng.shuffle(ids)
        for i, cid in enumerate(ids):
            split[cid] = "test" if i < PER_DEPARTMENT["test"] else (
                "validation" if i < PER_DEPARTMENT["test"] + PER_DEPARTMENT["validation"] else "train")
    return split


DURATIONS = ["since yesterday", "for three days", "for about a week", "for two weeks", "for a month", "on and off"]
GREET_P = ["Hello doctor.", "Hi, good morning.", "Hello, can I ask you something?", "Hi there."]
GREET_D = ["Hello, how can I help you today?", "Good morning. What brings you here today?",
           "Hello. Please tell me what is bothering you."]
OPEN = ["I have had {a} and {b} {d}.", "I've been suffering from {a} {d}, and also {b}.",
        "For some reason I have {a} {d}. I also noticed {b}.", "I am not sure what to do. I have {a} and {b}."]
OPEN_ONE = ["I have had {a} {d}.", "I've noticed {a} {d}. What should I do?"]
ASK = ["Do you also have {s}?", "Have you noticed {s}?", "Is there any {s} as well?", "Any {s}?"]
YES = ["Yes, I do.", "Yes, a little.", "Yes, that too.", "Now that you mention it, yes."]
NO = ["No, not really.", "No, I don't think so.", "No."]
WHAT_IS_IT = ["What do you think it is?", "Is it something serious?", "What could this be?", None]
DIAGNOSE = ["From what you describe, this could be {c}. Only an examination can confirm it.",
            "These symptoms may fit {c}, but a doctor needs to examine you to be sure.",
            "It sounds like it might be {c}. I cannot be certain without an examination."]
ASK_EXAM = ["What tests do I need?", "Do I need any examinations?", "How can the doctor confirm it?"]
EXAM = ["A doctor may suggest {v}.", "Useful examinations would be {v}.", "To check this, a clinic may do {v}."]
ASK_MED = ["Is there any medicine I can take?", "What medication would help?", "What can I take for it?"]
MED = ["Options that are often used include {v}. Please check with a pharmacist or doctor first.",
       "Commonly used treatments are {v}. Ask a doctor or pharmacist before starting anything.",
       "Treatment may include {v}, but please discuss it with a clinician."]
ASK_DEP = ["Which department should I go to?", "Where should I book an appointment?", "Which clinic should I see?"]
DEP = ["You could book an appointment at the {v}.", "The {v} would be the right place to start.",
       "I would suggest the {v}."]
ASK_DIET = ["What should I eat?", "Is there any food that helps?", "Should I change my diet?"]
DIET = ["It may help to have {v}.", "Try to include {v} in your diet.", "Foods such as {v} are a good choice."]
ASK_CAUSE = ["What causes it?", "Why does this happen?", "How did I get this?"]
CAUSE = ["It is usually caused by {v}.", "This is often due to {v}.", "Most often the cause is {v}."]
ASK_AVOID = ["What foods should I avoid?", "Is there anything I should not eat or drink?",
             "Should I stay away from any food?"]
AVOID = ["It is best to avoid {v}.", "Try to cut down on {v}.", "You may want to stay away from {v}."]
ASK_CARE = ["Is there anything I should be careful about?", "What else can I do at home?",
            "Any advice for daily life?"]
CARE = ["A few things help: {v}.", "Some advice: {v}.", "Please remember to {v}."]
WORRY = ["I'm quite worried about this.", "I am a bit scared, to be honest.", "Will I be okay?"]
COMFORT = ["I understand your worry. Many people have this and it can usually be managed well.",
           "It is natural to worry. Getting it checked is the right step, and help is available.",
           "Try not to worry too much; you are doing the right thing by asking."]
THANKS = ["Thank you, doctor.", "Thanks a lot, that helps.", "Okay, thank you."]
BYE = ["You're welcome. Take care, and see a doctor if things get worse.",
       "You're welcome. I hope you feel better soon.", "Glad to help. Please see a clinician if it does not improve."]
FRIEND = ["My friend was told she has {c}. What causes it?", "I read about {c}. Why does it happen?",
          "My doctor mentioned {c}. How do people get it?"]

TOPICS = {  # patient question templates, doctor answer templates, action
    "exam": (ASK_EXAM, EXAM, "recommend_examination"),
    "med": (ASK_MED, MED, "recommend_medicine"),
    "dep": (ASK_DEP, DEP, "recommend_department"),
    "diet": (ASK_DIET, DIET, "recommend_diet"),
    "cause": (ASK_CAUSE, CAUSE, "explain_cause"),
    "avoid": (ASK_AVOID, AVOID, "answer_avoid"),
    "care": (ASK_CARE, CARE, "answer_precautions"),
    "worry": (WORRY, COMFORT, "chitchat"),
}


def join(values: list[str]) -> str:
    if not values:
        return ""
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def _doctor(turns: list[dict], condition: dict, action: str, templates: list[str], rng: random.Random) -> None:
    dtype, field = core.ACTIONS[action]
    history = [{"role": t["role"], "text": t["text"]} for t in turns]
    if field is None:
        values: list[str] = []
    elif field == "condition":
        values = [condition["name"]]
    elif field == "symptoms":
        said = " ".join(t["text"] for t in turns)
        values = [s for s in condition["symptoms"] if not core.mentioned(said, s)][:1] or condition["symptoms"][:1]
    else:
        v = condition[field]
        values = v if isinstance(v, list) else [v]
    text = rng.choice(templates).format(v=join(values), c=condition["name"], s=values[0] if values else "")
    turns.append({
        "role": "doctor", "text": text[0].upper() + text[1:], "type": dtype, "action": action,
        "field": field, "slots": {core.FIELD_LABELS[field]: values} if field else {},
        "knowledge": [core.fact_text(condition["name"], field, values)] if field else [],
        "history_len": len(history),
    })


def dialogue(condition: dict, rng: random.Random) -> list[dict]:
    turns: list[dict] = []

    def patient(text: str) -> None:
        turns.append({"role": "patient", "text": text})

    if rng.random() < 0.3:
        patient(rng.choice(GREET_P))
        _doctor(turns, condition, "chitchat", GREET_D, rng)
    symptoms = condition["symptoms"]
    topics = list(TOPICS)
    if rng.random() < 0.2:  # knowledge-first: the condition is already named, no diagnosis
        patient(rng.choice(FRIEND).format(c=condition["name"]))
        _doctor(turns, condition, "explain_cause", CAUSE, rng)
        topics.remove("cause")
    else:
        a, b = rng.sample(symptoms[:3], 2)
        d = rng.choice(DURATIONS)
        patient(rng.choice(OPEN).format(a=a, b=b, d=d) if rng.random() < 0.7 else rng.choice(OPEN_ONE).format(a=a, d=d))
        for _ in range(rng.choice([1, 1, 2])):
            _doctor(turns, condition, "ask_symptom", ASK, rng)
            patient(rng.choice(YES if rng.random() < 0.6 else NO))
        question = rng.choice(WHAT_IS_IT)
        if question:
            turns[-1]["text"] += " " + question
        _doctor(turns, condition, "inform_diagnosis", DIAGNOSE, rng)
    for topic in rng.sample(topics, rng.randint(2, 4)):
        asks, answers, action = TOPICS[topic]
        patient(rng.choice(asks))
        _doctor(turns, condition, action, answers, rng)
    patient(rng.choice(THANKS))
    _doctor(turns, condition, "chitchat", BYE, rng)
    return turns


def generate(n: int = 4000, seed: int = 0) -> dict:
    kb = load_kb()
    split = condition_splits(kb)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        condition = kb["conditions"][i % len(kb["conditions"])]
        out.append({"id": f"d{i:05d}", "condition": condition["id"], "department": condition["department"],
                    "split": split[condition["id"]], "turns": dialogue(condition, rng)})
    return {"seed": seed, "splits": split, "dialogues": out}


def examples(corpus: dict, split: str) -> list[dict]:
    """Every doctor turn of ``split`` with its history (the unit the models are trained on)."""
    out = []
    for d in corpus["dialogues"]:
        if d["split"] != split:
            continue
        for i, t in enumerate(d["turns"]):
            if t["role"] == "doctor":
                history = [{"role": u["role"], "text": u["text"]} for u in d["turns"][:i]]
                out.append({"dialogue": d["id"], "condition": d["condition"], "history": history, **t})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/dialogue/corpus.json"))
    parser.add_argument("-n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    corpus = generate(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(corpus))
    counts: dict[str, int] = {}
    for d in corpus["dialogues"]:
        counts[d["split"]] = counts.get(d["split"], 0) + 1
    print(json.dumps({"dialogues": counts, **{s: len(examples(corpus, s)) for s in counts}}))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()

"""Dialogue logic shared by training, evaluation and the Triton decode loop (pure Python + NumPy).

This file is copied next to the python-backend ``model.py`` at export, so it must not import torch,
transformers or anything from ``services``: only the standard library and NumPy.

Instruction = dialogue type + action + target slots (InsMed). The action fixes the slot type; the slot
values come from the knowledge base entry that retrieval picks (``retrieve``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np

TYPES = ("diagnosis", "recommendation", "knowledge", "qa", "chitchat")
# action -> (dialogue type, knowledge-base field it targets or None)
ACTIONS = {
    "ask_symptom": ("diagnosis", "symptoms"),
    "inform_diagnosis": ("diagnosis", "condition"),
    "recommend_examination": ("recommendation", "examinations"),
    "recommend_medicine": ("recommendation", "medications"),
    "recommend_department": ("recommendation", "clinic"),
    "recommend_diet": ("recommendation", "diet_recommended"),
    "explain_cause": ("knowledge", "cause"),
    "answer_avoid": ("qa", "diet_avoid"),
    "answer_precautions": ("qa", "precautions"),
    "chitchat": ("chitchat", None),
}
ACTION_NAMES = tuple(ACTIONS)
FIELD_LABELS = {
    "symptoms": "symptoms", "condition": "condition", "examinations": "examinations", "medications": "medications",
    "clinic": "department", "diet_recommended": "recommended food", "diet_avoid": "food to avoid",
    "precautions": "precautions", "cause": "cause",
}
FACT_FIELDS = ("symptoms", "examinations", "medications", "clinic", "diet_recommended", "diet_avoid",
               "precautions", "cause")
HISTORY_TURNS = 4  # utterances the encoder and the generator see
SYSTEM = "You are a careful medical consultation assistant. You never give a certain diagnosis."
NOTICE = ("This is general information, not a diagnosis or medical advice. "
          "Please consult a qualified clinician about your symptoms.")


def speaker(role: str) -> str:
    return "Patient" if role in ("patient", "user") else "Doctor"


def history_text(turns: list[dict], n: int = HISTORY_TURNS) -> str:
    """The last ``n`` utterances as 'Patient: ... Doctor: ...' (what the instruction encoder reads)."""
    return " ".join(f"{speaker(t['role'])}: {t['text']}" for t in turns[-n:])


def patient_text(turns: list[dict]) -> str:
    """Everything the patient said (what condition retrieval reads)."""
    return " ".join(t["text"] for t in turns if t["role"] in ("patient", "user"))


def condition_profile(c: dict) -> str:
    return f"{c['name']}: {', '.join(c['symptoms'])}"


def facts(kb: dict) -> list[dict]:
    """One retrievable fact per (condition, field)."""
    out = []
    for c in kb["conditions"]:
        for f in FACT_FIELDS:
            value = c[f]
            values = value if isinstance(value, list) else [value]
            out.append({"condition": c["id"], "field": f, "values": values,
                        "text": f"{c['name']} {FIELD_LABELS[f]}: {'; '.join(values)}"})
    return out


def fact_text(name: str, field: str, values: list[str]) -> str:
    return f"{name} {FIELD_LABELS[field]}: {'; '.join(values)}"


def instruction_text(dtype: str, action: str, field: str | None) -> str:
    return f"type={dtype}; action={action}; target={FIELD_LABELS[field] if field else 'none'}"


PROMPT_TOKEN_BUDGET = 320  # the whole prompt; the corpus's prompts take 109 (median) to 159 (max) tokens
KNOWLEDGE_TOKEN_BUDGET = 96  # the knowledge facts; the corpus's gold facts take at most 33
TRIMMED = "…"  # marks where a patient message was cut


def build_prompt(history: list[dict], instruction: str | None, knowledge: list[str],
                 count_tokens: Callable[[str], int] | None = None, budget: int = PROMPT_TOKEN_BUDGET,
                 report: dict | None = None) -> str:
    """The generator's prompt in SmolLM2's chat format; ``instruction`` None = the ablation.

    With ``count_tokens`` (the generator tokenizer's count: the Triton model and the evaluation both
    pass it) the prompt keeps to ``budget`` tokens, so a long message cannot make prefill slow
    (issue #25: 4,000 digits were ~4,000 prompt tokens, 14 s). The rule, in this order:

    1. the system sentence and the instruction are always kept;
    2. knowledge facts are kept whole, in retrieval order, while they fit ``KNOWLEDGE_TOKEN_BUDGET``
       (a first fact longer than that keeps its beginning);
    3. the last ``HISTORY_TURNS`` utterances are added newest first, each whole, while they fit what
       is left; the first that does not fit and every older one are dropped — except the newest
       utterance (the patient's message), which is never dropped: it keeps its *last* words that fit,
       after a "…".

    Prompts of the corpus are far under the budget and come out unchanged. ``report``, when given, is
    filled with ``prompt_tokens``, ``utterances_dropped``, ``message_trimmed``, ``facts_dropped``.
    """
    system = SYSTEM
    if instruction:
        system += f"\nInstruction: {instruction}"
    lines = [f"{speaker(t['role'])}: {t['text']}" for t in history[-HISTORY_TURNS:]]
    if count_tokens is None:
        return _assemble(system, knowledge, lines)
    kept = _fit_knowledge(knowledge, count_tokens)
    target, prompt, facts_dropped = budget, "", len(knowledge) - len(kept)
    for _ in range(4):  # token merges across the joins may cost a token or two more than the parts
        chosen, trimmed = _fit_lines(lines, count_tokens, target - count_tokens(_assemble(system, kept, [])))
        prompt = _assemble(system, kept, chosen)
        total = count_tokens(prompt)
        if total <= budget:
            break
        target -= total - budget
    if report is not None:
        report.update(prompt_tokens=count_tokens(prompt), utterances_dropped=len(lines) - len(chosen),
                      message_trimmed=trimmed, facts_dropped=facts_dropped)
    return prompt


def _assemble(system: str, knowledge: list[str], lines: list[str]) -> str:
    if knowledge:
        system += "\nKnowledge: " + " | ".join(knowledge)
    dialogue = "\n".join(lines)
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{dialogue}<|im_end|>\n"
            "<|im_start|>assistant\n")


def _fit_knowledge(knowledge: list[str], count_tokens: Callable[[str], int]) -> list[str]:
    kept: list[str] = []
    for fact in knowledge:
        if count_tokens(" | ".join([*kept, fact])) > KNOWLEDGE_TOKEN_BUDGET:
            if not kept:  # one overlong fact: its beginning (the condition and field come first)
                end = _longest(len(fact), lambda n, fact=fact: count_tokens(fact[:n]) <= KNOWLEDGE_TOKEN_BUDGET)
                kept.append(fact[:end])
            break
        kept.append(fact)
    return kept


def _fit_lines(lines: list[str], count_tokens: Callable[[str], int], room: int) -> tuple[list[str], bool]:
    """Newest first, whole lines while they fit ``room`` (one token per newline); the newest line
    keeps its tail when it does not fit. Returns (lines in order, whether the newest was cut)."""
    chosen: list[str] = []
    for i, line in enumerate(reversed(lines)):
        cost = count_tokens(line) + (1 if chosen else 0)
        if cost <= room:
            chosen.insert(0, line)
            room -= cost
            continue
        if i == 0:
            return [_tail(line, count_tokens, room)], True
        break
    return chosen, False


def _tail(line: str, count_tokens: Callable[[str], int], room: int) -> str:
    """'Patient: …<the last words of the message that fit room tokens>'."""
    head, _, text = line.partition(": ")
    prefix = f"{head}: {TRIMMED}"
    keep = _longest(len(text), lambda n: count_tokens(prefix + text[len(text) - n:]) <= room)
    tail = text[len(text) - keep:]
    space = tail.find(" ")
    if 0 <= space < 20 and space + 1 < len(tail) and keep < len(text):  # start on a word, not inside one
        tail = tail[space + 1:]
    return prefix + tail


def _longest(limit: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [0, limit] with fits(n) (fits is monotone: shorter text, fewer tokens)."""
    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def mentioned(text: str, phrase: str) -> bool:
    words = [w for w in re.findall(r"[a-z]+", phrase.lower()) if len(w) > 3]
    low = text.lower()
    return bool(words) and sum(w in low for w in words) / len(words) >= 0.5


def retrieve(kb: dict, condition_emb: np.ndarray, patient_emb: np.ndarray, history: list[dict],
             action: str | None, fact_emb: np.ndarray | None = None, k: int = 3) -> dict:
    """Knowledge for the next system turn.

    With an instruction (``action``): the condition whose profile is nearest to what the patient said,
    and that condition's fact for the action's field (for ask_symptom: symptoms not yet mentioned).
    Without (``action`` None, the ablation): the ``k`` facts nearest to what the patient said.
    """
    conditions = kb["conditions"]
    by_name = [c for c in conditions if c["name"].lower() in patient_text(history).lower()]
    scores = normalise(condition_emb) @ normalise(patient_emb)
    best = by_name[0] if by_name else conditions[int(np.argmax(scores))]
    if action is None:
        all_facts = facts(kb)
        order = np.argsort(-(normalise(fact_emb) @ normalise(patient_emb)))[:k]
        return {"condition": best["id"], "knowledge": [all_facts[i]["text"] for i in order], "slots": {}}
    field = ACTIONS[action][1]
    if field is None:
        return {"condition": best["id"], "knowledge": [], "slots": {}}
    if field == "condition":
        values = [best["name"]]
    elif field == "symptoms":
        said = " ".join(t["text"] for t in history)
        values = [s for s in best["symptoms"] if not mentioned(said, s)][:1] or best["symptoms"][:1]
    else:
        value = best[field]
        values = value if isinstance(value, list) else [value]
    return {"condition": best["id"], "knowledge": [fact_text(best["name"], field, values)],
            "slots": {FIELD_LABELS[field]: values}}


def load_kb(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)

"""Dialogue logic shared by training, evaluation and the Triton decode loop (pure Python + NumPy).

This file is copied next to the python-backend ``model.py`` at export, so it must not import torch,
transformers or anything from ``services``: only the standard library and NumPy.

Instruction = dialogue type + action + target slots (InsMed). The action fixes the slot type; the slot
values come from the knowledge base entry that retrieval picks (``retrieve``).
"""

from __future__ import annotations

import json
import re

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


def build_prompt(history: list[dict], instruction: str | None, knowledge: list[str]) -> str:
    """The generator's prompt in SmolLM2's chat format; ``instruction`` None = the ablation."""
    system = SYSTEM
    if instruction:
        system += f"\nInstruction: {instruction}"
    if knowledge:
        system += "\nKnowledge: " + " | ".join(knowledge)
    dialogue = "\n".join(f"{speaker(t['role'])}: {t['text']}" for t in history[-HISTORY_TURNS:])
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{dialogue}<|im_end|>\n"
            "<|im_start|>assistant\n")


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

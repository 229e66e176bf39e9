"""The fixed finding set, the MeSH → finding mapping, and a negation-aware rule labeller.

The labeller turns report text into finding labels. It is used twice: to label reports whose MeSH
terms are missing, and to score generated reports (clinical efficacy: the findings the labeller
reads from the generated text against those it reads from the reference text).

    >>> label_text("Mild cardiomegaly. No pleural effusion or pneumothorax.")["cardiomegaly"]
    True
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

FINDINGS: tuple[str, ...] = (
    "normal", "cardiomegaly", "pleural_effusion", "nodule_mass", "opacity_consolidation", "atelectasis",
    "pneumothorax", "emphysema", "fracture", "support_devices",
)
ABNORMAL: tuple[str, ...] = FINDINGS[1:]
NUM_FINDINGS = len(FINDINGS)

#: MeSH major heading (text before the first "/", lower case) → finding
MESH: dict[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural_effusion",
    "nodule": "nodule_mass", "mass": "nodule_mass", "multiple pulmonary nodules": "nodule_mass",
    "opacity": "opacity_consolidation", "consolidation": "opacity_consolidation",
    "airspace disease": "opacity_consolidation", "infiltrate": "opacity_consolidation",
    "pneumonia": "opacity_consolidation",
    "pulmonary atelectasis": "atelectasis",
    "pneumothorax": "pneumothorax",
    "emphysema": "emphysema", "pulmonary emphysema": "emphysema",
    "pulmonary disease, chronic obstructive": "emphysema", "lung, hyperlucent": "emphysema",
    "fractures, bone": "fracture",
    "catheters, indwelling": "support_devices", "implanted medical device": "support_devices",
    "surgical instruments": "support_devices", "tube, inserted": "support_devices",
    "medical device": "support_devices", "stents": "support_devices", "pacemaker, artificial": "support_devices",
}

#: PadChest label → finding (for co-occurrence evidence in the symptom graph)
PADCHEST: dict[str, str] = {
    "normal": "normal", "cardiomegaly": "cardiomegaly", "pleural effusion": "pleural_effusion",
    "nodule": "nodule_mass", "mass": "nodule_mass", "multiple nodules": "nodule_mass", "pulmonary mass": "nodule_mass",
    "infiltrates": "opacity_consolidation", "consolidation": "opacity_consolidation",
    "alveolar pattern": "opacity_consolidation", "pneumonia": "opacity_consolidation",
    "ground glass pattern": "opacity_consolidation",
    "atelectasis": "atelectasis", "laminar atelectasis": "atelectasis", "lobar atelectasis": "atelectasis",
    "segmental atelectasis": "atelectasis", "round atelectasis": "atelectasis",
    "pneumothorax": "pneumothorax",
    "emphysema": "emphysema", "copd signs": "emphysema", "hyperinflated lung": "emphysema",
    "rib fracture": "fracture", "clavicle fracture": "fracture", "vertebral fracture": "fracture",
    "humeral fracture": "fracture", "fracture": "fracture",
    "pacemaker": "support_devices", "central venous catheter": "support_devices", "nsg tube": "support_devices",
    "endotracheal tube": "support_devices", "dual chamber device": "support_devices",
    "single chamber device": "support_devices", "electrical device": "support_devices",
    "sternotomy": "support_devices", "surgery": "support_devices", "chest drain tube": "support_devices",
    "central venous catheter via jugular vein": "support_devices",
    "central venous catheter via subclavian vein": "support_devices", "tracheostomy tube": "support_devices",
    "artificial heart valve": "support_devices", "metal": "support_devices", "suture material": "support_devices",
}

_PATTERNS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": (r"cardiomegaly", r"(heart|cardiac (silhouette|contour|shadow|size)|heart size) (is |are )?"
                     r"(mildly |moderately |markedly |slightly |severely )?(enlarged|increased)",
                     r"enlarge(d|ment of the) (heart|cardiac)", r"enlarged cardiac silhouette"),
    "pleural_effusion": (r"(?<!pericardial )effusion", r"blunting of the (left |right |bilateral )?"
                         r"(costophrenic|cp)", r"costophrenic (angle )?blunting"),
    "nodule_mass": (r"\bnodul", r"\bmass(es)?\b"),
    "opacity_consolidation": (r"opacit", r"consolidat", r"airspace (disease|process)", r"infiltrat", r"pneumonia"),
    "atelectasis": (r"atelecta",),
    "pneumothorax": (r"pneumothora",),
    "emphysema": (r"emphysem", r"\bcopd\b", r"hyperinfla", r"hyperexpan", r"chronic obstructive"),
    "fracture": (r"fractur",),
    "support_devices": (r"pacemaker", r"catheter", r"\bpicc\b", r"\b(et|endotracheal|chest|feeding|ng|nasogastric)"
                        r" tube", r"\bport\b", r"sternotomy", r"sternal wires?", r"surgical clips?", r"\bclips\b",
                        r"\bstents?\b", r"\bleads?\b", r"defibrillator", r"\baicd\b", r"\bdevice\b",
                        r"\b(central|venous|jugular|subclavian) line", r"valve replacement"),
}
_COMPILED = {name: re.compile("|".join(f"(?:{p})" for p in pats)) for name, pats in _PATTERNS.items()}

_PRE_NEG = re.compile(r"\b(no|not|without|negative for|free of|clear of|absence of|resolution of|rather than|"
                      r"removal of|resolved|nor)\b")
_POST_NEG = re.compile(r"\b((is|are|was|were|has|have) (not|no longer) (seen|identified|present|visualized|"
                       r"appreciated|evident|demonstrated|noted)|(has|have) resolved|resolved|removed)\b")
_SCOPE_BREAK = re.compile(r"\b(but|however|although|though|which|with the exception|except|otherwise|there is|"
                          r"there are|and there)\b")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?;])\s+|\s+\.\s*", text.lower()) if s.strip()]


def _negated(sentence: str, start: int, end: int) -> bool:
    before = sentence[:start]
    breaks = [m.end() for m in _SCOPE_BREAK.finditer(before)]
    clause = before[breaks[-1]:] if breaks else before
    if _PRE_NEG.search(clause):
        return True
    after = sentence[end:]
    cut = _SCOPE_BREAK.search(after)
    return bool(_POST_NEG.search(after[:cut.start()] if cut else after))


def label_text(text: str) -> dict[str, bool]:
    """Findings affirmed anywhere in ``text``; ``normal`` is true when none of the others is."""
    found = dict.fromkeys(FINDINGS, False)
    for sentence in sentences(text):
        for name, pattern in _COMPILED.items():
            if found[name]:
                continue
            for match in pattern.finditer(sentence):
                if not _negated(sentence, match.start(), match.end()):
                    found[name] = True
                    break
    found["normal"] = not any(found[name] for name in ABNORMAL)
    return found


def from_mesh(terms: Iterable[str]) -> dict[str, bool]:
    """Findings from MeSH major headings (``"Opacity/lung/base/left"`` → opacity_consolidation)."""
    found = dict.fromkeys(FINDINGS, False)
    for term in terms:
        finding = MESH.get(term.split("/")[0].strip().lower())
        if finding:
            found[finding] = True
    found["normal"] = not any(found[name] for name in ABNORMAL)
    return found


def to_vector(found: dict[str, bool]) -> np.ndarray:
    return np.array([float(found[name]) for name in FINDINGS], dtype=np.float32)


def to_names(vector: np.ndarray) -> tuple[str, ...]:
    return tuple(name for name, value in zip(FINDINGS, vector, strict=True) if value > 0.5)


def clinical_efficacy(generated: list[str], references: list[str]) -> dict[str, float]:
    """Micro precision/recall/F1 over the nine abnormal findings (labeller on both texts), plus macro
    precision/recall/F1 (over findings that occur in the references), as CheXpert-labelled CE is reported."""
    pred = np.stack([to_vector(label_text(t)) for t in generated])[:, 1:]
    gold = np.stack([to_vector(label_text(t)) for t in references])[:, 1:]
    tp, fp, fn = (pred * gold).sum(0), (pred * (1 - gold)).sum(0), ((1 - pred) * gold).sum(0)
    precision = float(tp.sum() / max(tp.sum() + fp.sum(), 1))
    recall = float(tp.sum() / max(tp.sum() + fn.sum(), 1))
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    per = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    present = gold.sum(0) > 0
    macro = lambda x: float(x[present].mean()) if present.any() else 0.0  # noqa: E731
    return {"ce_precision": precision, "ce_recall": recall, "ce_f1": f1,
            "ce_macro_precision": macro(tp / np.maximum(tp + fp, 1)),
            "ce_macro_recall": macro(tp / np.maximum(tp + fn, 1)),
            "ce_macro_f1": macro(per)}

"""Response and instruction metrics (pure Python): BLEU-1/2, ROUGE-L, distinct-n, knowledge-entity F1, macro-F1."""

from __future__ import annotations

import math
import re
from collections import Counter

from services.common.text_metrics import longest_common_subsequence

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def bleu(hypotheses: list[str], references: list[str], n: int) -> float:
    """Corpus BLEU-n (uniform weights over 1..n, one reference, brevity penalty), in [0, 1]."""
    matches, totals = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for h, r in zip(hypotheses, references, strict=True):
        ht, rt = tokens(h), tokens(r)
        hyp_len, ref_len = hyp_len + len(ht), ref_len + len(rt)
        for k in range(1, n + 1):
            hc = Counter(tuple(ht[i: i + k]) for i in range(len(ht) - k + 1))
            rc = Counter(tuple(rt[i: i + k]) for i in range(len(rt) - k + 1))
            matches[k - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            totals[k - 1] += max(0, len(ht) - k + 1)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def rouge_l(hypotheses: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 over pairs."""
    scores = []
    for h, r in zip(hypotheses, references, strict=True):
        ht, rt = tokens(h), tokens(r)
        lcs = longest_common_subsequence(ht, rt)
        if lcs == 0:
            scores.append(0.0)
            continue
        p, rec = lcs / len(ht), lcs / len(rt)
        scores.append(2 * p * rec / (p + rec))
    return sum(scores) / max(1, len(scores))


def distinct(texts: list[str], n: int) -> float:
    grams = [tuple(t[i: i + n]) for text in texts for t in [tokens(text)] for i in range(len(t) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def kb_entities(kb: dict) -> list[str]:
    """Every knowledge value (condition names, symptoms, tests, medicines, foods, clinics, ...), lower case."""
    found = set()
    for c in kb["conditions"]:
        found.add(c["name"].lower())
        for field in ("symptoms", "examinations", "medications", "diet_recommended", "diet_avoid", "precautions"):
            found.update(v.lower() for v in c[field])
        found.add(c["clinic"].lower())
    return sorted(found, key=len, reverse=True)


def entities_in(text: str, entities: list[str]) -> set[str]:
    low = " ".join(tokens(text))
    return {e for e in entities if " ".join(tokens(e)) and f" {' '.join(tokens(e))} " in f" {low} "}


def entity_f1(hypotheses: list[str], references: list[str], entities: list[str]) -> float:
    """Micro F1 of knowledge entities mentioned in the hypothesis vs the reference."""
    tp = fp = fn = 0
    for h, r in zip(hypotheses, references, strict=True):
        he, re_ = entities_in(h, entities), entities_in(r, entities)
        tp, fp, fn = tp + len(he & re_), fp + len(he - re_), fn + len(re_ - he)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def macro_f1(gold: list[str], pred: list[str]) -> float:
    labels = sorted(set(gold))
    scores = []
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(p == label and g != label for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, pred, strict=True))
        scores.append(2 * tp / max(1, 2 * tp + fp + fn))
    return sum(scores) / max(1, len(scores))

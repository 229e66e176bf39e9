"""Captioning metrics, COCO-caption style, implemented here (no network, no Java, no WordNet download).

* BLEU-1..4: corpus-level, closest reference length brevity penalty, as ``pycocoevalcap`` Bleu (one reference).
* ROUGE-L: LCS-based F-measure with beta = 1.2 per sentence pair, averaged (``pycocoevalcap`` Rouge).
* METEOR: Banerjee & Lavie (2005) with exact-match unigram alignment only (no stemming, synonyms or
  paraphrase tables: the reference METEOR 1.5 jar needs Java and its data, nltk's needs WordNet):
  F_mean = 10 P R / (R + 9 P), penalty = 0.5 (chunks / matches)^3, per sentence, averaged. Exact-only
  METEOR runs slightly below the jar's score on the same text.
"""

from __future__ import annotations

import math
from collections import Counter

from services.common.text_metrics import longest_common_subsequence


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu(hypotheses: list[str], references: list[str], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 … BLEU-max_n."""
    if len(hypotheses) != len(references):
        raise ValueError("hypotheses and references differ in length")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's smoothing
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / max(hyp_len, 1))
    scores, log_sum = [], 0.0
    for n in range(max_n):
        log_sum += math.log((matches[n] + tiny) / (totals[n] + small))
        scores.append(bp * math.exp(log_sum / (n + 1)))
    return scores


def rouge_l(hypotheses: list[str], references: list[str], beta: float = 1.2) -> float:
    scores = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        lcs = longest_common_subsequence(h, r)
        if lcs == 0:
            scores.append(0.0)
            continue
        p, rec = lcs / len(h), lcs / len(r)
        scores.append((1 + beta**2) * p * rec / (rec + beta**2 * p))
    return sum(scores) / max(len(scores), 1)


def _align(h: list[str], r: list[str]) -> list[tuple[int, int]]:
    """Exact unigram alignment, left to right, preferring the match that keeps order (fewest chunks)."""
    used: set[int] = set()
    pairs = []
    for i, w in enumerate(h):
        options = [j for j, x in enumerate(r) if x == w and j not in used]
        if not options:
            continue
        last = pairs[-1][1] if pairs else -1
        j = min(options, key=lambda k: (k != last + 1, abs(k - last - 1)))
        used.add(j)
        pairs.append((i, j))
    return pairs


def meteor(hypotheses: list[str], references: list[str], alpha: float = 0.9, beta: float = 3.0,
           gamma: float = 0.5) -> float:
    scores = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        pairs = _align(h, r)
        m = len(pairs)
        if m == 0:
            scores.append(0.0)
            continue
        p, rec = m / len(h), m / len(r)
        fmean = p * rec / (alpha * p + (1 - alpha) * rec)
        chunks = 1 + sum(1 for (a, b), (c, d) in zip(pairs, pairs[1:], strict=False) if not (c == a + 1 and d == b + 1))
        penalty = gamma * (chunks / m) ** beta
        scores.append(fmean * (1 - penalty))
    return sum(scores) / max(len(scores), 1)


def caption_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    b = bleu(hypotheses, references)
    return {"BLEU-1": b[0], "BLEU-2": b[1], "BLEU-3": b[2], "BLEU-4": b[3],
            "METEOR": meteor(hypotheses, references), "ROUGE-L": rouge_l(hypotheses, references)}

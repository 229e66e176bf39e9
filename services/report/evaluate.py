"""Scoring pieces of ``medstack evaluate report`` (services/report/evaluation.py): decoding after the finding
head's plan, the baselines (constant normal report, retrieval by predicted findings or by KiUT's visual features,
template sentences from the finding head) and per-report statistics from which corpus BLEU and clinical-efficacy F1
are bootstrapped over reports, for one model or the mean over training seeds.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from services.common.comparisons import BOOTSTRAP_RESAMPLES, Comparison
from services.report import data, plan, search, serving
from services.report.findings import ABNORMAL, FINDINGS, clinical_efficacy, label_text, sentences, to_vector
from services.report.metrics import _ngrams, caption_scores, meteor, rouge_l
from services.report.model import KiUT, knowledge_inputs
from services.report.reports import Report
from services.report.train import _auroc, plan_index

log = logging.getLogger(__name__)


@torch.no_grad()
def encode(model: KiUT, images: np.ndarray, batch: int = 64) -> dict[str, torch.Tensor]:
    parts: list[dict[str, torch.Tensor]] = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s:s + batch].astype(np.float32)[:, None] / 255.0)
        parts.append(model.encode(x))
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def step_fn(model: KiUT, enc: dict[str, torch.Tensor]):  # noqa: ANN201
    memory = knowledge_inputs(enc)

    @torch.no_grad()
    def step(tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(rows)
        logits = model.decode(torch.from_numpy(tokens), **{k: v[idx] for k, v in memory.items()})
        return torch.log_softmax(logits[:, -1], dim=-1).numpy()

    return step


def head_prefix(model: KiUT, probs: np.ndarray, thresholds: dict | None = None) -> np.ndarray | None:
    """``(N, 1 + 9)`` plan prefixes from the finding head's calls at the calibrated thresholds (``thresholds.json``
    of the served checkpoint: every variant shares its frozen head); None for a model without a plan."""
    if not model.cfg.plan:
        return None
    from services.report import consistency

    calls = plan.head_calls(probs, FINDINGS, thresholds or consistency.load_thresholds(), ABNORMAL)
    return plan.prefix(calls, ABNORMAL, plan_index(model.vocab_size))


def generate(model: KiUT, images: np.ndarray, beam_size: int = 1, batch: int = 64,
             max_tokens: int = serving.MAX_TOKENS, thresholds: dict | None = None
             ) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per image and the finding probabilities (N, F); a planned model writes after the head's plan."""
    enc = encode(model, images)
    probs = enc["finding_probs"].numpy()
    prefix = head_prefix(model, probs, thresholds)
    step = step_fn(model, enc)
    if beam_size == 1:
        ids: list[list[int]] = []
        for s in range(0, len(images), batch):
            rows = np.arange(s, min(s + batch, len(images)))
            sub = lambda tokens, r, rows=rows: step(tokens, rows[r])  # noqa: E731
            ids.extend(search.greedy(sub, len(rows), max_tokens, None if prefix is None else prefix[rows]))
    else:
        ids = [search.beam(step, i, beam_size, max_tokens, prefix=None if prefix is None else list(prefix[i]))
               for i in range(len(images))]
    return ids, probs


def score(texts: list[str], references: list[str], probs: np.ndarray | None, labels: np.ndarray,
          normal: str | None = None) -> dict:
    """Caption metrics, clinical efficacy, the finding head's AUROC (with ``probs``), and how often the text is
    the ``normal`` template (the constant normal report) or names no finding."""
    out = {k: round(v, 4) for k, v in caption_scores(texts, references).items()}
    out.update({k: round(v, 4) for k, v in clinical_efficacy(texts, references).items()})
    if probs is not None:
        aucs = [_auroc(probs[:, i], labels[:, i]) for i in range(len(FINDINGS))]
        out["finding_auroc_mean"] = round(float(np.mean([a for a in aucs if a is not None])), 4)
        out["finding_auroc"] = {n: (round(a, 3) if a is not None else None)
                                for n, a in zip(FINDINGS, aucs, strict=True)}
    out["mean_words"] = round(float(np.mean([len(t.split()) for t in texts])), 1)
    out["distinct_texts"] = len(set(texts))  # 1 = the same report for every image
    named = np.stack([to_vector(label_text(t)) for t in texts])[:, 1:]
    gold = np.stack([to_vector(label_text(t)) for t in references])[:, 1:]
    out["images_naming_a_finding"] = int((named.sum(1) > 0).sum())
    if normal is not None:
        out["normal_template_share"] = round(sum(t == normal for t in texts) / len(texts), 4)
    out["named_findings"] = {n: {"images": int(named[:, j].sum()),
                                 "in_reference": int((named[:, j] * gold[:, j]).sum())}
                             for j, n in enumerate(ABNORMAL) if named[:, j].any()}
    return out


def example_rows(labels: np.ndarray) -> list[int]:
    """Test reports shown as examples: the first normal one and the first with each of cardiomegaly, pleural
    effusion, support devices and emphysema (by their MeSH labels), so that the examples differ in what the
    image shows."""
    rows: list[int] = []
    for name in ("normal", "cardiomegaly", "pleural_effusion", "support_devices", "emphysema"):
        hits = [i for i in np.flatnonzero(labels[:, FINDINGS.index(name)] > 0.5) if i not in rows]
        if hits:
            rows.append(int(hits[0]))
    return rows


# ---- the held-out test set, shared by the ablation table above and `medstack evaluate report` ------------------

@dataclass(frozen=True)
class TestSet:
    corpus: data.Corpus
    reports: list[Report]
    images: np.ndarray  # (N, 128, 128) uint8, one render per report
    references: list[str]
    labels: np.ndarray  # (N, F) MeSH-derived finding vectors

    @property
    def train(self) -> list[Report]:
        return self.corpus.splits["train"]


def test_set(limit: int | None = None) -> TestSet:
    """The first ``limit`` test reports (all 707 with None) and their images."""
    corpus = data.Corpus.load()
    reports = corpus.splits["test"][:limit]
    images = data.eval_images(corpus.splits["test"], "test")[: len(reports)]
    return TestSet(corpus, reports, images, [r.text for r in reports], np.stack([r.labels for r in reports]))


# ---- trivial baselines --------------------------------------------------------------------------------------

def most_common(texts: list[str]) -> str:
    """The most frequent text; ties go to the one seen first."""
    return Counter(texts).most_common(1)[0][0]


def constant_report(train: list[Report]) -> str:
    """The most common report among the training reports labelled normal (emitted for every test image)."""
    return most_common([r.text for r in train if r.labels[FINDINGS.index("normal")] > 0.5])


def combination_reports(train: list[Report]) -> dict[tuple[str, ...], str]:
    """The most common training report per finding combination: the report a training-bank image stands for.

    Training images are rendered per finding combination (``data.train_bank``), and training pairs each report
    with a random bank image of its combination, so a bank image's "own report" is any training report of its
    combination; the most common one is the retrieval baseline's pick (deterministic)."""
    by_combo: dict[tuple[str, ...], list[str]] = {}
    for r in train:
        by_combo.setdefault(data.combo_of(r.labels), []).append(r.text)
    return {combo: most_common(texts) for combo, texts in by_combo.items()}


@torch.no_grad()
def visual_features(model: KiUT, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """(N, S, S) uint8 → (N, d): KiUT's frozen visual path, its last encoder level averaged over the 64 tokens
    (what the decoder's global image path reads)."""
    parts = [model.encode(torch.from_numpy(images[s:s + batch].astype(np.float32)[:, None] / 255.0),
                          visual_only=True)["memory3"].mean(1).numpy() for s in range(0, len(images), batch)]
    return np.concatenate(parts)


def nearest(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of ``keys`` with the highest cosine similarity to each query (ties: the lowest row)."""
    q = queries / (np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12)
    k = keys / (np.linalg.norm(keys, axis=1, keepdims=True) + 1e-12)
    return np.argmax(q @ k.T, axis=1)


def retrieved_reports(query_features: np.ndarray, bank_features: np.ndarray, bank_combos: list[tuple[str, ...]],
                      train: list[Report]) -> list[str]:
    """Per query, the training report of the nearest training-bank image (:func:`combination_reports`)."""
    reports = combination_reports(train)
    return [reports[bank_combos[i]] for i in nearest(query_features, bank_features)]


def findings_report(calls: tuple[str, ...], combos: dict[tuple[str, ...], str], counts: Counter) -> str:
    """The training report of the finding combination closest to ``calls``: the same combination if a training
    report has it, else the one with the highest Jaccard overlap (ties: the most frequent combination)."""
    if calls in combos:
        return combos[calls]
    wanted = set(calls)
    best = max(combos, key=lambda c: (len(wanted & set(c)) / max(len(wanted | set(c)), 1), counts[c]))
    return combos[best]


def finding_sentences(train: list[Report]) -> dict[str, str]:
    """Per abnormal finding, the most common training sentence in which the rule labeller reads that finding
    and no other (e.g. cardiomegaly → "the heart is enlarged ."): the template generator's fixed sentences."""
    by_finding: dict[str, list[str]] = {}
    for r in train:
        for sentence in sentences(r.text):
            named = [n for n, on in label_text(sentence).items() if on and n != "normal"]
            if len(named) == 1:
                by_finding.setdefault(named[0], []).append(f"{sentence} .")
    return {name: most_common(texts) for name, texts in by_finding.items()}


def template_report(calls: tuple[str, ...], normal: str, fixed: dict[str, str]) -> str:
    """The rule-based generator: the constant normal report's sentences that deny none of ``calls`` (e.g. "the
    lungs are clear" goes when opacity is called), then one fixed sentence per called finding."""
    from services.report.consistency import read_text

    kept = [f"{x} ." for x in sentences(normal) if not set(read_text(x)[1]) & set(calls)]
    return " ".join(kept + [fixed[name] for name in calls if name in fixed])


def baseline_texts(model: KiUT, test: TestSet, probs: np.ndarray, thresholds: dict | None = None
                   ) -> dict[str, list[str]]:
    """Each baseline's report for every test image, from the training split only:

    * ``constant``: the most common normal training report, for every image;
    * ``retrieval_findings``: the training report of the finding combination the head predicts
      (:func:`findings_report`; the head's calls at the calibrated thresholds, as KiUT's plan);
    * ``template``: one fixed sentence per finding the head calls present (:func:`template_report`);
    * ``retrieval_kiut``: the report of the nearest training image by cosine on KiUT's frozen visual features."""
    from services.report import consistency

    calls = plan.head_calls(probs, FINDINGS, thresholds or consistency.load_thresholds(), ABNORMAL)
    called = [tuple(n for n, on in zip(ABNORMAL, row, strict=True) if on) for row in calls]
    combos = combination_reports(test.train)
    counts = Counter(data.combo_of(r.labels) for r in test.train)
    normal = constant_report(test.train)
    fixed = finding_sentences(test.train)
    bank, bank_combos = data.train_bank(test.train)
    return {
        "constant": [normal] * len(test.reports),
        "retrieval_findings": [findings_report(c, combos, counts) for c in called],
        "template": [template_report(c, normal, fixed) for c in called],
        "retrieval_kiut": retrieved_reports(visual_features(model, test.images), visual_features(model, bank),
                                            bank_combos, test.train),
    }


# ---- per-report statistics, and corpus metrics bootstrapped over reports --------------------------------------

def bleu_statistics(hypotheses: list[str], references: list[str], max_n: int = 4) -> np.ndarray:
    """(N, 2·max_n + 2): per report, the clipped n-gram matches and n-gram counts for n = 1 … max_n, then the
    hypothesis and reference lengths. Summed over reports they give ``metrics.bleu`` (:func:`corpus_bleu`)."""
    rows = []
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.split(), ref.split()
        matches, totals = [], []
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches.append(sum(min(c, rn[g]) for g, c in hn.items()))
            totals.append(max(len(h) - n + 1, 0))
        rows.append(matches + totals + [len(h), len(r)])
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), 2 * max_n + 2)


def corpus_bleu(sums: np.ndarray, n: int = 4) -> np.ndarray:
    """BLEU-n from summed :func:`bleu_statistics` (``(..., 2·max_n + 2)``, any leading axes), pycocoevalcap's
    smoothing and closest-length brevity penalty, as ``metrics.bleu``."""
    max_n = (sums.shape[-1] - 2) // 2
    matches, totals = sums[..., :n], sums[..., max_n:max_n + n]
    hyp_len, ref_len = sums[..., -2], sums[..., -1]
    bp = np.where(hyp_len > ref_len, 1.0, np.exp(1 - ref_len / np.maximum(hyp_len, 1)))
    return bp * np.exp(np.log((matches + 1e-15) / (totals + 1e-9)).sum(-1) / n)


def ce_statistics(hypotheses: list[str], references: list[str]) -> np.ndarray:
    """(N, 3): per report, true positives, false positives and false negatives over the nine abnormal findings
    (rule labeller on both texts). Summed they give ``findings.clinical_efficacy``'s micro F1 (:func:`micro_f1`)."""
    pred = np.stack([to_vector(label_text(t)) for t in hypotheses])[:, 1:].astype(np.float64)
    gold = np.stack([to_vector(label_text(t)) for t in references])[:, 1:].astype(np.float64)
    return np.stack([(pred * gold).sum(1), (pred * (1 - gold)).sum(1), ((1 - pred) * gold).sum(1)], axis=1)


def micro_f1(sums: np.ndarray) -> np.ndarray:
    """Micro F1 from summed :func:`ce_statistics` (``(..., 3)``); 0 when nothing is named or present."""
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def _seeds_axis(stats: np.ndarray) -> np.ndarray:
    """Per-report statistics ``(N, k)`` of one model, or ``(S, N, k)`` of S training seeds → ``(S, N, k)``."""
    return stats[None] if stats.ndim == 2 else stats


def seed_mean(stats: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray]) -> float:
    """The corpus figure of each seed's reports, averaged over the seeds."""
    return float(np.mean(statistic(_seeds_axis(stats).sum(1))))


def bootstrap_difference(ours: np.ndarray, baseline: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                         seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, chunk: int = 1000) -> list[float] | None:
    """95 % paired bootstrap interval of statistic(ours) − statistic(baseline), where the statistic is computed
    from per-report statistics summed over a resample of the reports (the same resample for both: Koehn 2004's
    paired bootstrap for corpus BLEU). Either side may carry a leading axis of training seeds (``(S, N, k)``): its
    figure is then the mean over the seeds of each seed's corpus figure on the resample. None below two reports."""
    ours, baseline = _seeds_axis(ours), _seeds_axis(baseline)
    n = ours.shape[1]
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        figure = lambda stats, counts=counts: statistic(np.einsum("bn,snk->bsk", counts, stats)).mean(1)  # noqa: E731
        diffs.append(figure(ours) - figure(baseline))
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def corpus_comparison(name: str, metric: str, *, ours: np.ndarray, baseline: np.ndarray,
                      statistic: Callable[[np.ndarray], np.ndarray], baseline_name: str, samples: str,
                      seeds: list[int] | None = None) -> Comparison:
    """A corpus-level metric (BLEU-4, micro F1) of ours beside a baseline, with :func:`bootstrap_difference`;
    per-report statistics ``(N, k)``, or ``(S, N, k)`` for the mean over S training seeds."""
    return Comparison(name=name, metric=metric, higher_is_better=True,
                      ours=round(seed_mean(ours, statistic), 4), baseline_name=baseline_name,
                      baseline=round(seed_mean(baseline, statistic), 4), seeds=seeds or [0],
                      ci95=bootstrap_difference(ours, baseline, statistic), samples=samples)


def per_report_scores(hypotheses: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """ROUGE-L and (exact-match) METEOR of each report: their corpus figures are the means of these."""
    pairs = list(zip(hypotheses, references, strict=True))
    return {"ROUGE-L": np.array([rouge_l([h], [r]) for h, r in pairs]),
            "METEOR": np.array([meteor([h], [r]) for h, r in pairs])}

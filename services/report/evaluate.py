"""Score KiUT and its ablations on the held-out test split (rendered images, real reports).

    python -m services.report.evaluate                  # greedy for all variants, beam 3 for KiUT
    python -m services.report.evaluate --variants kiut --beam 0

Writes ``services/report/checkpoints/kiut/evaluation.json`` and prints a Markdown table for docs/report.md.

The same module scores the served model beside the trivial baselines for ``medstack evaluate report``
(``services/report/evaluation.py``): :func:`baseline_texts` (a constant normal report, and the report of the
nearest training image) and the per-report statistics from which corpus BLEU and clinical-efficacy F1 are
bootstrapped over reports (:func:`corpus_comparison`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from services.common.comparisons import BOOTSTRAP_RESAMPLES, Comparison
from services.report import data, search, serving
from services.report.findings import ABNORMAL, FINDINGS, clinical_efficacy, label_text, to_vector
from services.report.metrics import _ngrams, caption_scores, meteor, rouge_l
from services.report.model import KiUT, knowledge_inputs
from services.report.reports import Report
from services.report.train import _auroc, checkpoint_dir, load

log = logging.getLogger(__name__)

PUBLISHED = {"BLEU-1": 0.525, "BLEU-2": 0.360, "BLEU-3": 0.251, "BLEU-4": 0.185, "METEOR": 0.242, "ROUGE-L": 0.409}
LABELS = {"kiut": "KiUT (ours, CPU size)", "no_u": "KiUT without U-connection", "plain": "Transformer, no knowledge",
          "retrieval": "Retrieval only (top-1 knowledge-base report)"}


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


def generate(model: KiUT, images: np.ndarray, beam_size: int = 1, batch: int = 64,
             max_tokens: int = serving.MAX_TOKENS) -> tuple[list[list[int]], np.ndarray]:
    """Token ids per image and the finding probabilities (N, F)."""
    enc = encode(model, images)
    step = step_fn(model, enc)
    if beam_size == 1:
        ids: list[list[int]] = []
        for s in range(0, len(images), batch):
            rows = np.arange(s, min(s + batch, len(images)))
            sub = lambda tokens, r, rows=rows: step(tokens, rows[r])  # noqa: E731
            ids.extend(search.greedy(sub, len(rows), max_tokens))
    else:
        ids = [search.beam(step, i, beam_size, max_tokens) for i in range(len(images))]
    return ids, enc["finding_probs"].numpy()


def score(texts: list[str], references: list[str], probs: np.ndarray | None, labels: np.ndarray) -> dict:
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
    out["named_findings"] = {n: {"images": int(named[:, j].sum()),
                                 "in_reference": int((named[:, j] * gold[:, j]).sum())}
                             for j, n in enumerate(ABNORMAL) if named[:, j].any()}
    return out


def image_dependence(model: KiUT, images: np.ndarray, tokens: np.ndarray, labels: np.ndarray) -> dict:
    """Teacher-forced token loss of the test reports with their own images and with the images shuffled
    (a fixed permutation): the difference is how much the words depend on the image (0 = not at all)."""
    from services.report.train import validate

    perm = np.random.default_rng(0).permutation(len(images))
    matched = validate(model, images, tokens, labels)["token_loss"]
    shuffled = validate(model, images[perm], tokens, labels)["token_loss"]
    return {"token_loss": round(matched, 4), "token_loss_shuffled_images": round(shuffled, 4),
            "image_gain": round(shuffled - matched, 4)}


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


def pixel_features(images: np.ndarray, size: int = 32) -> np.ndarray:
    """(N, S, S) uint8 → (N, size²): box-averaged to size × size, each image standardised (cosine = correlation)."""
    n, s, _ = images.shape
    x = images.astype(np.float32).reshape(n, size, s // size, size, s // size).mean((2, 4)).reshape(n, -1)
    return (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-6)


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


def baseline_texts(model: KiUT, test: TestSet) -> dict[str, list[str]]:
    """Each trivial baseline's report for every test image: ``constant`` (the most common normal training
    report), ``retrieval_kiut`` (nearest training image by cosine on KiUT's frozen visual features) and
    ``retrieval_pixels`` (nearest by correlation of 32 × 32 pixels)."""
    bank, combos = data.train_bank(test.train)
    normal = constant_report(test.train)
    return {
        "constant": [normal] * len(test.reports),
        "retrieval_kiut": retrieved_reports(visual_features(model, test.images), visual_features(model, bank),
                                            combos, test.train),
        "retrieval_pixels": retrieved_reports(pixel_features(test.images), pixel_features(bank), combos, test.train),
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


def bootstrap_difference(ours: np.ndarray, baseline: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
                         seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES, chunk: int = 1000) -> list[float] | None:
    """95 % paired bootstrap interval of statistic(ours) − statistic(baseline), where the statistic is computed
    from per-report statistics summed over a resample of the reports (the same resample for both: Koehn 2004's
    paired bootstrap for corpus BLEU). None below two reports."""
    n = len(ours)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        diffs.append(statistic(counts @ ours) - statistic(counts @ baseline))
    low, high = np.percentile(np.concatenate(diffs), [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def corpus_comparison(name: str, metric: str, *, ours: np.ndarray, baseline: np.ndarray,
                      statistic: Callable[[np.ndarray], np.ndarray], baseline_name: str, samples: str,
                      seeds: list[int] | None = None) -> Comparison:
    """A corpus-level metric (BLEU-4, micro F1) of ours beside a baseline, with :func:`bootstrap_difference`."""
    return Comparison(name=name, metric=metric, higher_is_better=True,
                      ours=round(float(statistic(ours.sum(0))), 4), baseline_name=baseline_name,
                      baseline=round(float(statistic(baseline.sum(0))), 4), seeds=seeds or [0],
                      ci95=bootstrap_difference(ours, baseline, statistic), samples=samples)


def per_report_scores(hypotheses: list[str], references: list[str]) -> dict[str, np.ndarray]:
    """ROUGE-L and (exact-match) METEOR of each report: their corpus figures are the means of these."""
    pairs = list(zip(hypotheses, references, strict=True))
    return {"ROUGE-L": np.array([rouge_l([h], [r]) for h, r in pairs]),
            "METEOR": np.array([meteor([h], [r]) for h, r in pairs])}


def head_text_disagreement(texts: list[str], probs: np.ndarray, threshold: float = 0.5) -> dict:
    """How often the written report contradicts the model's own finding head (abnormal findings only): the head
    says p ≥ threshold and the text does not name the finding, or the text names it and the head says less."""
    named = np.stack([to_vector(label_text(t)) for t in texts])[:, 1:] > 0.5
    head = probs[:, 1:] >= threshold
    return {"threshold": threshold,
            "images_head_positive_text_silent": int((head & ~named).any(1).sum()),
            "images_text_names_head_negative": int((named & ~head).any(1).sum()),
            "per_finding_head_positive_text_silent": {n: int((head[:, j] & ~named[:, j]).sum())
                                                      for j, n in enumerate(ABNORMAL)}}


def evaluate(variants: list[str], beam_size: int = 3, limit: int | None = None, beam_limit: int | None = None,
             directory: Path | None = None) -> dict:
    """Scores per variant; ``directory`` (one variant only) reads that checkpoint folder instead."""
    if directory is not None and len(variants) != 1:
        raise ValueError("--checkpoint needs exactly one variant")
    torch.set_num_threads(1)
    test = test_set(limit)
    corpus, reports, images, references, labels = test.corpus, test.reports, test.images, test.references, test.labels
    results: dict = {"data": f"test split: {len(reports)} Open-i reports, one DRR each (generator "
                             f"v{data.GENERATOR_VERSION}, seeds {data.EVAL_SEEDS}+), never seen in training",
                     "published_kiut_iu_xray": PUBLISHED, "examples": {}}
    for variant in variants:
        folder = directory or checkpoint_dir(variant)
        if not (folder / "model.pt").exists():
            log.warning("no checkpoint for %s in %s; skipped", variant, folder)
            continue
        model, vocab, _ = load(variant, folder)
        started = time.perf_counter()
        ids, probs = generate(model, images)
        texts = [vocab.decode(i) for i in ids]
        results[variant] = score(texts, references, probs, labels) | {
            "decoding": "greedy", "seconds": round(time.perf_counter() - started, 1)}
        results[variant].update(image_dependence(model, images, corpus.tokens("test")[: len(reports)], labels))
        results["examples"][variant] = [
            {"test_row": i, "labels": [n for n, v in zip(FINDINGS, labels[i], strict=True) if v > 0.5],
             "finding_probs": {n: round(float(p), 2) for n, p in zip(FINDINGS, probs[i], strict=True) if p >= 0.3},
             "reference": references[i], "generated": texts[i]} for i in example_rows(labels)]
        log.info("%s greedy: %s", variant, {k: v for k, v in results[variant].items() if k != "finding_auroc"})
        if variant == "kiut":
            sims = torch.nn.functional.normalize(torch.from_numpy(probs), dim=1) @ model.kb_keys.T + model.kb_tiebreak
            top = torch.topk(sims, 1).indices
            retrieved = [vocab.decode(model.kb_tokens[int(i)].tolist()) for i in top[:, 0]]
            results["retrieval"] = score(retrieved, references, None, labels) | {"decoding": "top-1 retrieved report"}
            if beam_size > 1:
                started = time.perf_counter()
                n = len(images) if beam_limit is None else min(beam_limit, len(images))
                ids, _ = generate(model, images[:n], beam_size=beam_size)
                texts = [vocab.decode(i) for i in ids]
                results["kiut_beam"] = score(texts, references[:n], probs[:n], labels[:n]) | {
                    "decoding": f"beam {beam_size}" + ("" if n == len(images) else f" (first {n} test reports)"),
                    "seconds": round(time.perf_counter() - started, 1)}
                log.info("kiut beam: %s", {k: v for k, v in results["kiut_beam"].items() if k != "finding_auroc"})
    return results


def table(results: dict) -> str:
    cols = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "ce_precision", "ce_recall", "ce_f1",
            "finding_auroc_mean", "distinct_texts", "image_gain"]
    lines = ["| model | decoding | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for key, label in (("kiut_beam", "KiUT (ours, CPU size)"), ("kiut", LABELS["kiut"]), ("no_u", LABELS["no_u"]),
                       ("plain", LABELS["plain"]), ("retrieval", LABELS["retrieval"])):
        if key in results:
            r = results[key]
            lines.append(f"| {label} | {r['decoding']} | " + " | ".join(
                f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r[c]) if isinstance(r.get(c), int) else "–"
                for c in cols) + " |")
    p = results["published_kiut_iu_xray"]
    lines.append("| KiUT, published (real IU-Xray images) | beam | " + " | ".join(
        f"{p[c]:.3f}" if c in p else "–" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["kiut", "no_u", "plain"])
    parser.add_argument("--beam", type=int, default=3, help="beam size for KiUT's second pass (0/1: skip)")
    parser.add_argument("--limit", type=int, default=None, help="first N test reports only (smoke runs)")
    parser.add_argument("--beam-limit", type=int, default=None, help="beam search on the first N test reports only")
    parser.add_argument("--out", type=Path, default=serving.checkpoint_dir() / "evaluation.json")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder (with one --variants)")
    parser.add_argument("--name", default=None, help="key to store a --checkpoint's results under")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine per-variant result files (from parallel runs) into --out instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.merge:
        results = {}
        for path in args.merge:
            part = json.loads(path.read_text())
            examples = results.get("examples", {}) | part.pop("examples", {})
            results |= part
            results["examples"] = examples
    else:
        results = evaluate(args.variants, args.beam, args.limit, args.beam_limit, args.checkpoint)
        if args.name:
            variant = args.variants[0]
            for key in [k for k in list(results) if k == variant or k.startswith(f"{variant}_") or k == "retrieval"]:
                results[key.replace(variant, args.name, 1) if key != "retrieval" else f"{args.name}_retrieval"] = \
                    results.pop(key)
            results["examples"] = {args.name: results["examples"].pop(variant, [])}
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

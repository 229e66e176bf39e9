"""Instructions vs none with fair arms (issue #19): the same knowledge in both prompts, three arms.

    python -m services.dialogue.fair_arms --turns 400      # checkpoints/fair/evaluation.json

Arms, on the same held-out turns (test conditions, never in training), greedy, ≤ 40 new tokens:

* **with instructions**: the fair instructed generator (``checkpoints/fair/generator_lora.pt``), prompt =
  predicted instruction (``dialogue_encoder``'s head) + the fact retrieval picks for the predicted action;
* **without instructions**: the fair ablation (``checkpoints/fair/generator_noinst_lora.pt``, trained on the
  same turns with the same gold fact and no instruction line), prompt = **the same fact**, no instruction;
  so the two prompts differ only by the ``Instruction:`` line;
* **gold instructions** (ceiling of the instruction predictor): the instructed generator given the
  corpus's instruction, with the fact retrieval picks for that (gold) action.

Scores (``services/dialogue/metrics.py``, against the corpus's doctor turn): corpus BLEU-2, mean ROUGE-L F1,
distinct-2, micro knowledge-entity F1, and action adherence (``services/dialogue/adherence.py``: does the
reply do what the instruction said), to the predicted instruction (what the instructed arm was told) and
to the gold action. Intervals: paired bootstrap over turns, 10,000 resamples, of with − without; for the
corpus-level metrics (BLEU, distinct-2, entity F1) each resample recomputes the corpus figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from services.common.comparisons import BOOTSTRAP_RESAMPLES, Comparison, compare, paired_ci95
from services.dialogue import core, corpus, encoder, lm, metrics
from services.dialogue.adherence import Judge
from services.dialogue.train_generator import FAIR_ADAPTERS, corpus_data
from services.dialogue.train_instruction import load_head, sample

ARMS = ("with_instructions", "without_instructions", "gold_instructions")
SEED = 0
TURNS = 400
QUICK_TURNS = 16
MAX_NEW_TOKENS = 40
BATCH = 16
RESULT = FAIR_ADAPTERS[True].parent / "evaluation.json"
BASELINE = "same generator recipe and knowledge, no instruction line (fair ablation)"


def available() -> bool:
    """Both fair adapters exist (train_generator writes them only once their budget is done)."""
    return all(p.exists() for p in FAIR_ADAPTERS.values())


def turns_sample(n: int) -> list[dict]:
    """The first ``n`` of the seeded 400-turn test sample (so the quick slice is a prefix of the full)."""
    return sample(corpus.examples(corpus_data(), "test"), TURNS, SEED)[:n]


def plan(turns: list[dict], kb: dict) -> list[dict]:
    """Per turn: predicted and gold action, and each arm's prompt (what the Triton model would build)."""
    from services.dialogue.evaluate import kb_embeddings, token_counter

    cond_emb, _ = kb_embeddings(kb)
    count = token_counter()
    head = load_head()
    hist = encoder.encode([core.history_text(t["history"]) for t in turns])
    patient = encoder.encode([core.patient_text(t["history"]) or " " for t in turns]).numpy()
    with torch.no_grad():
        lt, la = head(hist)
    out = []
    for i, t in enumerate(turns):
        action, dtype = core.ACTION_NAMES[int(la[i].argmax())], core.TYPES[int(lt[i].argmax())]
        found = core.retrieve(kb, cond_emb, patient[i], t["history"], action)
        gold = core.retrieve(kb, cond_emb, patient[i], t["history"], t["action"])
        instruction = core.instruction_text(dtype, action, core.ACTIONS[action][1])
        gold_instruction = core.instruction_text(t["type"], t["action"], t["field"])
        out.append({
            "action": action, "gold_action": t["action"], "condition_hit": found["condition"] == t["condition"],
            "prompts": {
                "with_instructions": core.build_prompt(t["history"], instruction, found["knowledge"], count),
                "without_instructions": core.build_prompt(t["history"], None, found["knowledge"], count),
                "gold_instructions": core.build_prompt(t["history"], gold_instruction, gold["knowledge"], count),
            }})
    return out


def load_fair_generators() -> dict[bool, lm.SmolLM]:
    base = lm.base_model()
    out = {}
    for flag, path in FAIR_ADAPTERS.items():
        saved = torch.load(path)
        model = copy.deepcopy(base)
        lm.load_lora(model, {k: v.float() for k, v in saved["lora"].items()}, saved["meta"])
        out[flag] = lm.merge_lora(model)
    return out


def decode(model: lm.SmolLM, prompts: list[str], batch: int = BATCH) -> list[str]:
    """Greedy answers, in batches of similar prompt length (less padding)."""
    tok = lm.tokenizer()
    end = tok.token_to_id(lm.END)
    ids = [tok.encode(p).ids for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch):
        chunk = order[start: start + batch]
        for i, answer in zip(chunk, lm.greedy_batch(model, [ids[i] for i in chunk], end, MAX_NEW_TOKENS),
                             strict=True):
            out[i] = tok.decode(answer).strip()
    return out


# ---- per-turn statistics and the corpus figures they sum to ------------------------------------------

def bleu_stats(hyp: str, ref: str, n: int = 2) -> list[float]:
    """[matches_1..n, totals_1..n, hyp_len, ref_len] of one turn (corpus BLEU sums these, as ``metrics.bleu``)."""
    ht, rt = metrics.tokens(hyp), metrics.tokens(ref)
    matches, totals = [], []
    for k in range(1, n + 1):
        hc = Counter(tuple(ht[i: i + k]) for i in range(len(ht) - k + 1))
        rc = Counter(tuple(rt[i: i + k]) for i in range(len(rt) - k + 1))
        matches.append(sum(min(c, rc[g]) for g, c in hc.items()))
        totals.append(max(0, len(ht) - k + 1))
    return [*matches, *totals, len(ht), len(rt)]


def bleu_from(sums: np.ndarray, n: int = 2) -> np.ndarray:
    """Corpus BLEU-n from summed ``bleu_stats`` (…, 2n+2), as ``metrics.bleu`` computes it."""
    matches, totals, hyp, ref = sums[..., :n], sums[..., n: 2 * n], sums[..., 2 * n], sums[..., 2 * n + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_p = np.log(matches / np.maximum(totals, 1)).mean(-1)
        bp = np.where(hyp > ref, 1.0, np.exp(1 - ref / np.maximum(hyp, 1)))
        value = bp * np.exp(log_p)
    return np.where((hyp == 0) | (matches.min(-1) == 0), 0.0, value)


def entity_stats(hyp: str, ref: str, entities: list[str]) -> list[int]:
    he, re_ = metrics.entities_in(hyp, entities), metrics.entities_in(ref, entities)
    return [len(he & re_), len(he - re_), len(re_ - he)]


def f1_from(sums: np.ndarray) -> np.ndarray:
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    return 2 * tp / np.maximum(1, 2 * tp + fp + fn)


def bigram_incidence(hyps: list[str], vocab: dict) -> tuple[np.ndarray, np.ndarray]:
    """(turns × distinct bigrams) presence, and each turn's bigram count: distinct-2 of a multiset of turns
    is |bigrams present in any| / Σ counts."""
    rows = []
    for h in hyps:
        t = metrics.tokens(h)
        rows.append([vocab.setdefault(tuple(t[i: i + 2]), len(vocab)) for i in range(len(t) - 1)])
    present = np.zeros((len(hyps), max(1, len(vocab))), dtype=np.float32)
    for i, r in enumerate(rows):
        present[i, r] = 1.0
    return present, np.array([len(r) for r in rows], dtype=np.float64)


def bootstrap_weights(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, n) multiplicities of each turn in each resample (the same for every metric and arm)."""
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n), dtype=np.float32)
    np.add.at(weights, (np.arange(resamples)[:, None], idx), 1.0)
    return weights


def ci(values: np.ndarray) -> list[float]:
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def corpus_comparisons(hyps: dict[str, list[str]], refs: list[str], entities: list[str],
                       samples: str, tolerance: float | None = None,
                       ) -> tuple[list[Comparison], dict[str, dict[str, float]]]:
    """BLEU-2, distinct-2 and entity F1 of with vs without, with corpus-level paired bootstrap intervals;
    and every arm's corpus figures."""
    weights = bootstrap_weights(len(refs))
    figures: dict[str, dict[str, float]] = {}
    resampled: dict[str, dict[str, np.ndarray]] = {}
    vocab: dict = {}
    incidence = {arm: bigram_incidence(h, vocab) for arm, h in hyps.items()}
    for arm, h in hyps.items():
        b = np.array([bleu_stats(x, r) for x, r in zip(h, refs, strict=True)], dtype=np.float64)
        e = np.array([entity_stats(x, r, entities) for x, r in zip(h, refs, strict=True)], dtype=np.float64)
        present, counts = incidence[arm]
        present = np.pad(present, ((0, 0), (0, len(vocab) - present.shape[1])))
        figures[arm] = {"bleu_2": round(float(bleu_from(b.sum(0))), 4),
                        "distinct_2": round(float(present.max(0).sum() / max(1, counts.sum())), 4),
                        "entity_f1": round(float(f1_from(e.sum(0))), 4)}
        resampled[arm] = {"bleu_2": bleu_from(weights.astype(np.float64) @ b),
                          "distinct_2": ((weights @ present) > 0).sum(1) / np.maximum(1, weights @ counts),
                          "entity_f1": f1_from(weights.astype(np.float64) @ e)}
    out = []
    for metric, label in (("bleu_2", "corpus BLEU-2"), ("distinct_2", "distinct-2"),
                          ("entity_f1", "knowledge-entity F1 (micro)")):
        out.append(Comparison(
            name=f"fair arms, with vs without instructions: {label}", metric=label, higher_is_better=True,
            ours=figures["with_instructions"][metric], baseline_name=BASELINE,
            baseline=figures["without_instructions"][metric], seeds=[SEED],
            ci95=ci(resampled["with_instructions"][metric] - resampled["without_instructions"][metric]),
            samples=f"{samples} (corpus figure recomputed per resample)", tolerance=tolerance))
    return out, figures


def evaluate(n: int, tolerance: float | None = None, arms: tuple[str, ...] = ARMS) -> tuple[list[Comparison], dict]:
    """The comparisons (with − without, paired over the same ``n`` turns) and the details of ``arms``
    (the quick slice leaves out the gold ceiling); ``tolerance``: the regression guard's, per comparison."""
    kb = corpus.load_kb()
    turns = turns_sample(n)
    started = time.perf_counter()
    plans = plan(turns, kb)
    generators = load_fair_generators()
    hyps, seconds = {}, {}
    for arm in arms:
        tic = time.perf_counter()
        hyps[arm] = decode(generators[arm != "without_instructions"], [p["prompts"][arm] for p in plans])
        seconds[arm] = round((time.perf_counter() - tic) / len(turns), 2)
    refs = [t["text"] for t in turns]
    entities = metrics.kb_entities(kb)
    judge = Judge(kb)
    told = {arm: np.array([judge.adheres(p["gold_action"] if arm == "gold_instructions" else p["action"], h)
                           for p, h in zip(plans, hyps[arm], strict=True)], dtype=float) for arm in arms}
    right = {arm: np.array([judge.adheres(p["gold_action"], h) for p, h in zip(plans, hyps[arm], strict=True)],
                           dtype=float) for arm in arms}
    rouge = {arm: np.array([metrics.rouge_l([h], [r]) for h, r in zip(hyps[arm], refs, strict=True)]) for arm in arms}
    samples = f"{len(turns)} test turns"
    comparisons, figures = corpus_comparisons({a: hyps[a] for a in arms}, refs, entities, samples, tolerance)
    for metric, label, scores in (
        ("rouge_l", "ROUGE-L F1", rouge),
        ("adherence", "action adherence to the predicted instruction", told),
        ("adherence_gold", "action adherence to the gold action", right),
    ):
        comparisons.append(compare(f"fair arms, with vs without instructions: {label}", label,
                                   ours=scores["with_instructions"], baseline=scores["without_instructions"],
                                   baseline_name=BASELINE, seeds=[SEED], samples=samples, tolerance=tolerance))
        for arm in arms:
            figures[arm][metric] = round(float(scores[arm].mean()), 4)
    ceiling = {m: paired_ci95(s["gold_instructions"], s["with_instructions"])
               for m, s in (("rouge_l", rouge), ("adherence_gold", right))} if "gold_instructions" in arms else None
    adapters = {arm: {k: v for k, v in torch.load(FAIR_ADAPTERS[arm != "without_instructions"])["meta"].items()
                      if k in ("steps", "examples", "final_loss", "precision", "knowledge", "wall_s")}
                for arm in ("with_instructions", "without_instructions")}
    details = {
        "turns": len(turns), "decoding": "greedy", "max_new_tokens": MAX_NEW_TOKENS, "adapters": adapters,
        "arms": {arm: {**figures[arm], "seconds_per_turn": seconds[arm]} for arm in arms},
        "predicted_action_accuracy": round(float(np.mean([p["action"] == p["gold_action"] for p in plans])), 4),
        "retrieved_condition_accuracy": round(float(np.mean([p["condition_hit"] for p in plans])), 4),
        "ceiling_minus_with_ci95": ceiling,
        "samples": [{"history": t["history"][-2:], "reference": t["text"], "predicted_action": p["action"],
                     **{arm: hyps[arm][i] for arm in arms}}
                    for i, (t, p) in enumerate(zip(turns[:6], plans, strict=False))],
        "wall_s": round(time.perf_counter() - started),
    }
    return comparisons, details


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=TURNS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not available():
        raise SystemExit(f"train both fair generators first (docs/dialogue.md): missing "
                         f"{[str(p) for p in FAIR_ADAPTERS.values() if not p.exists()]}")
    torch.set_num_threads(args.threads)
    comparisons, details = evaluate(args.turns)
    result = {"command": f"python -m services.dialogue.fair_arms --turns {args.turns}",
              "comparisons": [c.as_dict() for c in comparisons], "details": details}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({**result, "details": {k: v for k, v in details.items() if k != "samples"}}, indent=1))  # noqa: T201


if __name__ == "__main__":
    main()

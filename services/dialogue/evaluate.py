"""Held-out evaluation: instruction prediction and response generation, with vs without instructions.

    python -m services.dialogue.evaluate                         # test conditions (unseen in training)
    python -m services.dialogue.evaluate --turns 40 --instruction-turns 1500

Instruction: accuracy and macro-F1 of dialogue type and action, joint accuracy, on ``--instruction-turns``
doctor turns of the test split. Generation: ``--turns`` test doctor turns answered by both generators
(greedy, the same decoding the Triton model runs), each with its own retrieval: predicted instruction +
slot-targeted fact, or (ablation) no instruction + the three facts nearest to the patient's words; a
third row feeds the corpus's own (gold) instruction and fact to the instructed generator, as an upper reference.
Writes ``services/dialogue/checkpoints/evaluation.json`` (read into the model manifests at export).

The pieces (``instruction_outcomes``, ``majority_labels``, ``generate_responses``, ``turn_scores``,
``corpus_scores``) are also what ``services/dialogue/evaluation.py`` (``medstack evaluate dialogue``)
scores with, per turn, beside the trivial baselines.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from services.dialogue import core, corpus, encoder, lm, metrics
from services.dialogue.export_specs import EVALUATION
from services.dialogue.train_generator import ADAPTERS, corpus_data
from services.dialogue.train_instruction import featurise, load_head, sample

# name -> (instructed generator, gold instruction and fact instead of predicted + retrieved)
SYSTEMS = {"with_instructions": (True, False), "without_instructions": (False, False),
           "gold_instructions": (True, True)}


# ---- instruction head --------------------------------------------------------------------------------

def instruction_outcomes(examples: list[dict], cache: Path | None = None) -> dict[str, np.ndarray]:
    """Gold and predicted type/action indices (into ``core.TYPES`` / ``core.ACTION_NAMES``) per turn."""
    emb, types, actions = featurise(examples, cache)
    head = load_head()
    with torch.no_grad():
        lt, la = head(emb)
    return {"type": types.numpy(), "action": actions.numpy(),
            "type_pred": lt.argmax(1).numpy(), "action_pred": la.argmax(1).numpy()}


def majority_labels(examples: list[dict]) -> dict[str, int]:
    """The trivial baseline's constant answers, from ``examples`` (the training turns): the most frequent
    dialogue type, action, and (type, action) pair, as indices into ``core.TYPES`` / ``core.ACTION_NAMES``."""
    dtype = Counter(e["type"] for e in examples).most_common(1)[0][0]
    action = Counter(e["action"] for e in examples).most_common(1)[0][0]
    pair = Counter((e["type"], e["action"]) for e in examples).most_common(1)[0][0]
    return {"type": core.TYPES.index(dtype), "action": core.ACTION_NAMES.index(action),
            "pair_type": core.TYPES.index(pair[0]), "pair_action": core.ACTION_NAMES.index(pair[1])}


def instruction_summary(o: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracy and macro-F1 of type and action, and joint accuracy, from ``instruction_outcomes``."""
    t_ok, a_ok = o["type_pred"] == o["type"], o["action_pred"] == o["action"]
    return {
        "type_accuracy": round(float(t_ok.mean()), 4),
        "type_macro_f1": round(metrics.macro_f1([core.TYPES[i] for i in o["type"]],
                                                [core.TYPES[i] for i in o["type_pred"]]), 4),
        "action_accuracy": round(float(a_ok.mean()), 4),
        "action_macro_f1": round(metrics.macro_f1([core.ACTION_NAMES[i] for i in o["action"]],
                                                  [core.ACTION_NAMES[i] for i in o["action_pred"]]), 4),
        "joint_accuracy": round(float((t_ok & a_ok).mean()), 4),
    }


def instruction_eval(data: dict, n: int, seed: int) -> dict:
    test = sample(corpus.examples(data, "test"), n, seed)
    o = instruction_outcomes(test, Path(f".cache/dialogue/emb_test_{n}_{seed}.pt"))
    return {"split": "test", "turns": len(test), **instruction_summary(o)}


# ---- generation --------------------------------------------------------------------------------------

def kb_embeddings(kb: dict, cache_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Condition-profile and fact embeddings (what export ships as ``kb_embeddings.npz``), cached by the
    knowledge base's content under ``cache_dir`` (default ``lm.cache_dir()``)."""
    digest = hashlib.sha256(json.dumps(kb, sort_keys=True).encode()).hexdigest()[:16]
    path = (cache_dir or lm.cache_dir()) / f"kb_embeddings_{digest}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["conditions"], f["facts"]
    conditions = encoder.encode([core.condition_profile(c) for c in kb["conditions"]]).numpy()
    facts = encoder.encode([f["text"] for f in core.facts(kb)]).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, conditions=conditions, facts=facts)
    return conditions, facts


def token_counter() -> Callable[[str], int]:
    """The generator tokenizer's count, as the Triton model's prompt budget uses it."""
    tok = lm.tokenizer()
    return lambda text: len(tok.encode(text).ids)


class Planner:
    """What the Triton model does before decoding: instruction, retrieval, prompt (PyTorch encoder)."""

    def __init__(self, kb: dict) -> None:
        self.kb, self.head = kb, load_head()
        self.cond_emb, self.fact_emb = kb_embeddings(kb)
        self.count_tokens = token_counter()

    def __call__(self, history: list[dict], instructions: bool) -> tuple[str, dict]:
        emb = encoder.encode([core.history_text(history), core.patient_text(history) or " "])
        with torch.no_grad():
            lt, la = self.head(emb[:1])
        action, dtype = core.ACTION_NAMES[int(la.argmax())], core.TYPES[int(lt.argmax())]
        patient = emb[1].numpy()
        if instructions:
            found = core.retrieve(self.kb, self.cond_emb, patient, history, action)
            instruction = core.instruction_text(dtype, action, core.ACTIONS[action][1])
        else:
            found = core.retrieve(self.kb, self.cond_emb, patient, history, None, self.fact_emb)
            instruction = None
        return (core.build_prompt(history, instruction, found["knowledge"], self.count_tokens),
                {"action": action, **found})


def load_generators(instructed: Sequence[bool]) -> dict[bool, lm.SmolLM]:
    """The merged generators (``ADAPTERS[True]`` is the served one), the base weights read once."""
    base = lm.base_model()
    out = {}
    for flag in dict.fromkeys(instructed):
        saved = torch.load(ADAPTERS[flag])
        model = copy.deepcopy(base)
        lm.load_lora(model, {k: v.float() for k, v in saved["lora"].items()}, saved["meta"])
        out[flag] = lm.merge_lora(model)
    return out


def generate_responses(turns: list[dict], systems: Sequence[str], max_new_tokens: int,
                       planner: Planner | None = None) -> dict[str, dict]:
    """Each system's greedy answer to each turn: ``{system: {"hyps", "condition_hit", "seconds"}}``
    (``condition_hit``: retrieval picked the dialogue's condition; ``seconds``: per turn, planning included)."""
    planner = planner or Planner(corpus.load_kb())
    generators = load_generators([SYSTEMS[s][0] for s in systems])
    tok = lm.tokenizer()
    end = tok.token_to_id(lm.END)
    count_tokens = planner.count_tokens
    out: dict[str, dict] = {}
    for name in systems:
        instructed, gold = SYSTEMS[name]
        hyps, hits, seconds = [], [], []
        for t in turns:
            started = time.perf_counter()
            if gold:  # upper reference: the corpus's own instruction and knowledge fact
                prompt = core.build_prompt(t["history"], core.instruction_text(t["type"], t["action"], t["field"]),
                                           t["knowledge"], count_tokens)
                hits.append(True)
            else:
                prompt, found = planner(t["history"], instructed)
                hits.append(found["condition"] == t["condition"])
            ids = lm.greedy(generators[instructed], tok.encode(prompt).ids, end, max_new_tokens)
            hyps.append(tok.decode(ids).strip())
            seconds.append(time.perf_counter() - started)
        out[name] = {"hyps": hyps, "condition_hit": hits, "seconds": seconds}
    return out


def entity_recall(hypothesis: str, reference: str, entities: list[str]) -> float:
    """Share of the reference's knowledge-base entities that the hypothesis names; NaN when it names none."""
    wanted = metrics.entities_in(reference, entities)
    if not wanted:
        return float("nan")
    return len(wanted & metrics.entities_in(hypothesis, entities)) / len(wanted)


def turn_scores(hypothesis: str, reference: str, entities: list[str]) -> dict[str, float]:
    """Per-turn scores, the unit the paired bootstrap resamples: ROUGE-L F1 (its mean is the corpus
    ``rouge_l``), sentence BLEU-1 (with brevity penalty) and knowledge-entity recall (NaN: nothing to recall)."""
    return {"rouge_l": metrics.rouge_l([hypothesis], [reference]),
            "bleu_1": metrics.bleu([hypothesis], [reference], 1),
            "entity_recall": entity_recall(hypothesis, reference, entities)}


def corpus_scores(hyps: list[str], refs: list[str], entities: list[str]) -> dict[str, float]:
    """The corpus-level figures of docs/dialogue.md (corpus BLEU, mean ROUGE-L, distinct-n, micro entity F1)."""
    return {
        "bleu_1": round(metrics.bleu(hyps, refs, 1), 4), "bleu_2": round(metrics.bleu(hyps, refs, 2), 4),
        "rouge_l": round(metrics.rouge_l(hyps, refs), 4),
        "distinct_1": round(metrics.distinct(hyps, 1), 4), "distinct_2": round(metrics.distinct(hyps, 2), 4),
        "entity_f1": round(metrics.entity_f1(hyps, refs, entities), 4),
    }


def generation_eval(data: dict, n: int, seed: int, max_new_tokens: int) -> dict:
    kb = corpus.load_kb()
    turns = sample(corpus.examples(data, "test"), n, seed)
    entities = metrics.kb_entities(kb)
    refs = [t["text"] for t in turns]
    out: dict = {"split": "test", "turns": len(turns), "max_new_tokens": max_new_tokens, "decoding": "greedy"}
    answers = generate_responses(turns, list(SYSTEMS), max_new_tokens, Planner(kb))
    for name, (instructed, _) in SYSTEMS.items():
        a = answers[name]
        out[name] = {
            **corpus_scores(a["hyps"], refs, entities),
            "retrieved_condition_accuracy": round(sum(a["condition_hit"]) / len(turns), 4),
            "adapter": torch.load(ADAPTERS[instructed])["meta"], "wall_s": round(sum(a["seconds"])),
        }
    out["reference_samples"] = reference_samples(turns, answers, 8)
    return out


def reference_samples(turns: list[dict], answers: dict[str, dict], n: int) -> list[dict]:
    """The first ``n`` turns: last two utterances, reference, and each system's answer."""
    return [{"history": t["history"][-2:], "reference": t["text"],
             **{name.split("_")[0]: a["hyps"][i] for name, a in answers.items()}}
            for i, t in enumerate(turns[:n])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--instruction-turns", type=int, default=1500)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    data = corpus_data()
    result = json.loads(EVALUATION.read_text()) if EVALUATION.exists() else {}
    result["instruction"] = instruction_eval(data, args.instruction_turns, args.seed)
    if not args.skip_generation:
        result["generation"] = generation_eval(data, args.turns, args.seed, args.max_new_tokens)
    result["command"] = " ".join(["python -m services.dialogue.evaluate", *(sys.argv[1:] if argv is None else argv)])
    EVALUATION.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k != "generation"}
    summary["generation"] = {k: v for k, v in result.get("generation", {}).items() if k != "reference_samples"}
    print(json.dumps(summary, indent=1))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()

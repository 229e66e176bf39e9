"""Held-out evaluation: instruction prediction and response generation, with vs without instructions.

    python -m services.dialogue.evaluate                         # test conditions (unseen in training)
    python -m services.dialogue.evaluate --turns 40 --instruction-turns 1500

Instruction: accuracy and macro-F1 of dialogue type and action, joint accuracy, on ``--instruction-turns``
doctor turns of the test split. Generation: ``--turns`` test doctor turns answered by both generators
(greedy, the same decoding the Triton model runs), each with its own retrieval: predicted instruction +
slot-targeted fact, or (ablation) no instruction + the three facts nearest to the patient's words; a
third row feeds the corpus's own (gold) instruction and fact to the instructed generator, as an upper reference.
Writes ``services/dialogue/checkpoints/evaluation.json`` (read into the model manifests at export).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

from services.dialogue import core, corpus, encoder, lm, metrics
from services.dialogue.export_specs import EVALUATION
from services.dialogue.train_generator import ADAPTERS, corpus_data
from services.dialogue.train_instruction import featurise, load_head, sample


def instruction_eval(data: dict, n: int, seed: int) -> dict:
    test = sample(corpus.examples(data, "test"), n, seed)
    emb, types, actions = featurise(test, Path(f".cache/dialogue/emb_test_{n}_{seed}.pt"))
    head = load_head()
    with torch.no_grad():
        lt, la = head(emb)
    pt, pa = lt.argmax(1), la.argmax(1)
    return {
        "split": "test", "turns": len(test),
        "type_accuracy": round(float((pt == types).float().mean()), 4),
        "type_macro_f1": round(metrics.macro_f1([core.TYPES[i] for i in types], [core.TYPES[i] for i in pt]), 4),
        "action_accuracy": round(float((pa == actions).float().mean()), 4),
        "action_macro_f1": round(metrics.macro_f1([core.ACTION_NAMES[i] for i in actions],
                                                  [core.ACTION_NAMES[i] for i in pa]), 4),
        "joint_accuracy": round(float(((pt == types) & (pa == actions)).float().mean()), 4),
    }


class Planner:
    """What the Triton model does before decoding: instruction, retrieval, prompt (PyTorch encoder)."""

    def __init__(self, kb: dict) -> None:
        self.kb, self.head = kb, load_head()
        self.cond_emb = encoder.encode([core.condition_profile(c) for c in kb["conditions"]]).numpy()
        self.fact_emb = encoder.encode([f["text"] for f in core.facts(kb)]).numpy()

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
        return core.build_prompt(history, instruction, found["knowledge"]), {"action": action, **found}


def generation_eval(data: dict, n: int, seed: int, max_new_tokens: int) -> dict:
    kb = corpus.load_kb()
    turns = sample(corpus.examples(data, "test"), n, seed)
    planner = Planner(kb)
    tok = lm.tokenizer()
    end = tok.token_to_id(lm.END)
    entities = metrics.kb_entities(kb)
    refs = [t["text"] for t in turns]
    out: dict = {"split": "test", "turns": len(turns), "max_new_tokens": max_new_tokens, "decoding": "greedy"}
    samples = []
    systems = (("with_instructions", True, False), ("without_instructions", False, False),
               ("gold_instructions", True, True))
    for name, with_instructions, gold in systems:
        model = lm.merged_generator(ADAPTERS[with_instructions])
        hyps, condition_hits = [], 0
        started = time.time()
        for t in turns:
            if gold:  # upper reference: the corpus's own instruction and knowledge fact
                prompt = core.build_prompt(t["history"], core.instruction_text(t["type"], t["action"], t["field"]),
                                           t["knowledge"])
                condition_hits += 1
            else:
                prompt, found = planner(t["history"], with_instructions)
                condition_hits += found["condition"] == t["condition"]
            hyps.append(tok.decode(lm.greedy(model, tok.encode(prompt).ids, end, max_new_tokens)).strip())
        out[name] = {
            "bleu_1": round(metrics.bleu(hyps, refs, 1), 4), "bleu_2": round(metrics.bleu(hyps, refs, 2), 4),
            "rouge_l": round(metrics.rouge_l(hyps, refs), 4),
            "distinct_1": round(metrics.distinct(hyps, 1), 4), "distinct_2": round(metrics.distinct(hyps, 2), 4),
            "entity_f1": round(metrics.entity_f1(hyps, refs, entities), 4),
            "retrieved_condition_accuracy": round(condition_hits / len(turns), 4),
            "adapter": torch.load(ADAPTERS[with_instructions])["meta"], "wall_s": round(time.time() - started),
        }
        for i, h in enumerate(hyps[:8]):
            if name == "with_instructions":
                samples.append({"history": turns[i]["history"][-2:], "reference": refs[i], "with": h})
            else:
                samples[i][name.split("_")[0]] = h
    out["reference_samples"] = samples
    return out


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

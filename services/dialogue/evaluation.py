"""``medstack evaluate dialogue``: the served instruction head and generator beside their trivial baselines.

Two registered comparisons, in one run, on turns of the **test conditions** (never seen in training):

* **instruction head** (``dialogue_encoder``: MiniLM + the committed head) vs the majority class of the
  training turns (a constant answer), dialogue-type and action accuracy, paired per turn;
* **instructed generator** (``dialogue_generator``, the committed ``generator_lora.pt``, with the
  predicted instruction and the slot-targeted fact, i.e. what ``dialogue_generate`` serves) vs the
  **no-instruction ablation** (``generator_noinst_lora.pt``, same budget, three nearest facts), on the
  same turns with the same greedy decoding; per-turn knowledge-entity recall, ROUGE-L F1 and sentence
  BLEU-1 against the corpus's doctor turn, paired per turn.

The full run also decodes with the gold instruction and fact (the upper reference of docs/dialogue.md;
details only). The quick slice is the first turns of the same seeded samples, so its turns are a subset
of the full run's. Scoring is ``services/dialogue/evaluate.py``'s (one path for both).

When both **fair-arm** generators of issue #19 exist (``checkpoints/fair/``, written by
``train_generator --fair`` once their budget is done), the run adds ``services/dialogue/fair_arms.py``'s
comparisons: with vs without instructions, the same knowledge in both prompts, on 400 test turns (quick:
the first 16, tolerance 0.1 = one or two flipped turns of 16), BLEU-2, ROUGE-L, distinct-2,
knowledge-entity F1 and action adherence, with the gold-instruction ceiling in the details. Without
them the recorded comparisons above are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from services.common.comparisons import FamilyEvaluation, FamilyResult, compare
from services.dialogue import core, corpus, fair_arms, metrics
from services.dialogue.evaluate import (
    Planner,
    corpus_scores,
    generate_responses,
    instruction_outcomes,
    instruction_summary,
    majority_labels,
    reference_samples,
    turn_scores,
)
from services.dialogue.train_generator import corpus_data
from services.dialogue.train_instruction import sample

SEED = 0
MAX_NEW_TOKENS = 40
# (instruction turns, generation turns): full, quick; quick = the first turns of the full samples
FULL = (1500, 64)
QUICK = (100, 3)
FAIR_TOLERANCE = 0.1  # the fair arms' quick slice has 16 turns: one changed turn moves a mean by 0.0625


def _data_note(kb: dict, data: dict, n_instruction: int, n_generation: int) -> str:
    test = sorted({d["condition"] for d in data["dialogues"] if d["split"] == "test"})
    names = {c["id"]: c["name"] for c in kb["conditions"]}
    dialogues = sum(d["split"] == "test" for d in data["dialogues"])
    return (f"synthetic consultation corpus (`python -m services.dialogue.corpus`, seed 0), test split: "
            f"{n_instruction} doctor turns for the instruction head and {n_generation} for generation, "
            f"sampled with seed {SEED} from the {dialogues} test dialogues. Their {len(test)} conditions "
            f"({', '.join(names[c] for c in test)}) and those conditions' knowledge never appear in the "
            f"training split (split by condition): the head was trained on training turns (early stopping on "
            f"validation conditions), both LoRA generators on training turns only, and the majority baseline "
            f"is counted on training turns. Caveat: the corpus is template-generated and its templates are "
            f"shared across splits, so the conditions are unseen but the phrasing is not.")


def run(quick: bool) -> FamilyResult:
    n_instruction, n_generation = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(quick, n_instruction, n_generation)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, n_instruction: int, n_generation: int) -> FamilyResult:
    data = corpus_data()
    kb = corpus.load_kb()
    test = corpus.examples(data, "test")
    # the quick slices are prefixes of the full samples (random.sample is not prefix-stable in n)
    inst_turns = sample(test, FULL[0], SEED)[:n_instruction]
    gen_turns = sample(test, FULL[1], SEED)[:n_generation]

    o = instruction_outcomes(inst_turns)
    majority = majority_labels(corpus.examples(data, "train"))
    samples = f"{len(inst_turns)} test turns"
    comparisons = [
        compare("instruction head: dialogue type", "accuracy", ours=o["type_pred"] == o["type"],
                baseline=np.full(len(inst_turns), majority["type"]) == o["type"],
                baseline_name=f"majority type of the training turns ({core.TYPES[majority['type']]})",
                seeds=[SEED], samples=samples),
        compare("instruction head: action", "accuracy", ours=o["action_pred"] == o["action"],
                baseline=np.full(len(inst_turns), majority["action"]) == o["action"],
                baseline_name=f"majority action of the training turns ({core.ACTION_NAMES[majority['action']]})",
                seeds=[SEED], samples=samples),
    ]
    joint_majority = (o["type"] == majority["pair_type"]) & (o["action"] == majority["pair_action"])

    systems = ["with_instructions", "without_instructions"] + ([] if quick else ["gold_instructions"])
    answers = generate_responses(gen_turns, systems, MAX_NEW_TOKENS, Planner(kb))
    entities = metrics.kb_entities(kb)
    refs = [t["text"] for t in gen_turns]
    scores = {name: [turn_scores(h, r, entities) for h, r in zip(a["hyps"], refs, strict=True)]
              for name, a in answers.items()}
    with_entities = sum(np.isfinite(s["entity_recall"]) for s in scores["with_instructions"])
    for metric, label, sampled in (
        ("entity_recall", "knowledge-entity recall",
         f"{with_entities} of {len(refs)} test turns (those whose reference names a knowledge-base entity)"),
        ("rouge_l", "ROUGE-L F1", f"{len(refs)} test turns"),
        ("bleu_1", "sentence BLEU-1", f"{len(refs)} test turns"),
    ):
        comparisons.append(compare(
            f"generator with predicted instructions: {label}", label,
            ours=[s[metric] for s in scores["with_instructions"]],
            baseline=[s[metric] for s in scores["without_instructions"]],
            baseline_name="no-instruction ablation (same budget, 3 nearest facts)", seeds=[SEED], samples=sampled))

    details = {
        "instruction": {"turns": len(inst_turns), **instruction_summary(o),
                        "majority_joint_accuracy": round(float(joint_majority.mean()), 4),
                        "majority": {"type": core.TYPES[majority["type"]],
                                     "action": core.ACTION_NAMES[majority["action"]],
                                     "pair": [core.TYPES[majority["pair_type"]],
                                              core.ACTION_NAMES[majority["pair_action"]]]}},
        "generation": {
            "turns": len(gen_turns), "decoding": "greedy", "max_new_tokens": MAX_NEW_TOKENS,
            **{name: {**corpus_scores(a["hyps"], refs, entities),
                      "mean_entity_recall": _nanmean([s["entity_recall"] for s in scores[name]]),
                      "retrieved_condition_accuracy": round(float(np.mean(a["condition_hit"])), 4),
                      "seconds_per_turn": round(float(np.mean(a["seconds"])), 2)}
               for name, a in answers.items()},
            "samples": reference_samples(gen_turns, answers, 4),
        },
    }
    note = _data_note(kb, data, len(inst_turns), len(gen_turns))
    if fair_arms.available():
        n_fair = fair_arms.QUICK_TURNS if quick else fair_arms.TURNS
        arms = fair_arms.ARMS[:2] if quick else fair_arms.ARMS
        fair, details["fair_arms"] = fair_arms.evaluate(n_fair, FAIR_TOLERANCE, arms)
        comparisons += fair
        note += (f" Fair arms (issue #19): their own sample of {n_fair} test turns (seed {fair_arms.SEED}, same test "
                 f"conditions), both generators trained on the same training turns, the same knowledge fact in "
                 f"both prompts.")
    return FamilyResult(data=note, seeds=[SEED], comparisons=comparisons, details=details)


def _nanmean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


EVALUATION = FamilyEvaluation(
    family="dialogue", run=run, tolerance=0.05,
    served_models=("dialogue_encoder", "dialogue_generator", "dialogue_generate"),
)

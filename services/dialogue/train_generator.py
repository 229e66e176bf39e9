"""LoRA fine-tuning of SmolLM2-135M on the consultation corpus (CPU, one thread, fixed step budget).

    python -m services.dialogue.train_generator --iterations 23                    # with instructions
    python -m services.dialogue.train_generator --iterations 23 --no-instructions  # the ablation (3 nearest facts)

The fair arms of issue #19 (docs/dialogue.md, "Instructions vs none, fair arms"): both arms see the same
knowledge fact, only the instruction line differs; resumable, bf16 autocast where the CPU has it:

    python -m services.dialogue.train_generator --fair --iterations 188 --precision auto --resume
    python -m services.dialogue.train_generator --fair --iterations 188 --precision auto --resume --no-instructions

``--fair`` writes to ``checkpoints/fair/`` (the adapter, only once the budget is done) and keeps its
resumable training state (LoRA, AdamW moments, step, losses) in ``.cache/dialogue/fair/<arm>/``,
saved every ``--save-every`` seconds and when ``--max-seconds`` stops the run; ``--resume`` continues
from it at the saved step with the same turns (the turn order is a function of the seed only).

``--iterations`` (old name ``--max-steps``) is the budget; ``--max-seconds`` (``--minutes`` in minutes, its
deprecated form) only stops a run early. The adapter's ``meta`` records the iterations done, the seed and
the data version (pinned weights, corpus seed and sha256).

With instructions the prompt holds the gold instruction and the gold knowledge fact (teacher forcing;
at test time they come from the instruction predictor and retrieval). Without, the prompt holds no
instruction and either the three facts nearest to what the patient said (the recorded ablation, the
retrieval it also uses at test time) or, with ``--fair``, the same gold fact as the instructed arm.
Loss on the doctor's reply and the end token only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import torch

from services.common.resumable import bf16_available
from services.common.training import Budget, add_budget_arguments, data_version, provenance
from services.dialogue import core, corpus, lm

CHECKPOINTS = Path(__file__).parent / "checkpoints"
ADAPTERS = {True: CHECKPOINTS / "generator_lora.pt", False: CHECKPOINTS / "generator_noinst_lora.pt"}
# the fair arms (same knowledge in both prompts): their own folder, never the served adapter
FAIR_ADAPTERS = {True: CHECKPOINTS / "fair" / "generator_lora.pt",
                 False: CHECKPOINTS / "fair" / "generator_noinst_lora.pt"}
FAIR_STATES = {True: Path(".cache/dialogue/fair/with_instructions/train_state.pt"),
               False: Path(".cache/dialogue/fair/without_instructions/train_state.pt")}
# what must match for --resume to continue a saved state
RESUME_KEYS = ("with_instructions", "knowledge", "batch", "lr", "last_layers", "rank", "seed", "precision")


def corpus_data(path: Path = Path(".cache/dialogue/corpus.json")) -> dict:
    if not path.exists():
        data = corpus.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        return data
    return json.loads(path.read_text())


def dialogue_data_version(data: dict, *models: str) -> dict:
    """The pinned ``models`` (services.common.datasets names) and the corpus: its seed and sha256, and the
    knowledge base's sha256."""
    return data_version(*models, corpus_seed=data["seed"],
                        corpus_sha256=hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest(),
                        knowledge_base_sha256=hashlib.sha256(corpus.KB_PATH.read_bytes()).hexdigest())


class AblationRetriever:
    """Top-3 facts by similarity to the patient's words (no instruction)."""

    def __init__(self, kb: dict) -> None:
        from services.dialogue import encoder

        self.kb, self.encoder = kb, encoder
        self.fact_emb = encoder.encode([f["text"] for f in core.facts(kb)]).numpy()
        self.cond_emb = encoder.encode([core.condition_profile(c) for c in kb["conditions"]]).numpy()

    def __call__(self, histories: list[list[dict]]) -> list[list[str]]:
        embs = self.encoder.encode([core.patient_text(h) for h in histories]).numpy()
        return [core.retrieve(self.kb, self.cond_emb, e, h, None, self.fact_emb)["knowledge"]
                for e, h in zip(embs, histories, strict=True)]


def resolve_precision(precision: str) -> str:
    if precision == "auto":
        return "bf16" if bf16_available() else "fp32"
    return precision


def autocast(precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast of the matrix products (weights and LoRA stay fp32 masters), or nothing."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prompts_for(batch: list[dict], with_instructions: bool, retriever: AblationRetriever | None) -> list[str]:
    """The training prompts: gold instruction (or none) and the gold fact, or the ablation's 3 nearest facts."""
    if retriever is not None:
        knowledge = retriever([e["history"] for e in batch])
        return [core.build_prompt(e["history"], None, k) for e, k in zip(batch, knowledge, strict=True)]
    return [core.build_prompt(e["history"], core.instruction_text(e["type"], e["action"], e["field"])
                              if with_instructions else None, e["knowledge"]) for e in batch]


def save_state(path: Path, config: dict, step: int, seen: int, losses: list[float], wall_s: float,
               model: lm.SmolLM, opt: torch.optim.Optimizer) -> None:
    """Everything a resumed run needs, written atomically (a kill mid-write leaves the last state)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"config": config, "step": step, "examples": seen, "losses": losses, "wall_s": wall_s,
                "lora": lm.lora_state(model), "optimizer": opt.state_dict()}, tmp)
    os.replace(tmp, path)


def encode_batch(tok, prompts: list[str], replies: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows, masks = [], []
    for p, r in zip(prompts, replies, strict=True):
        pi = tok.encode(p).ids
        ri = tok.encode(r + lm.END).ids
        rows.append(pi + ri)
        masks.append([False] * len(pi) + [True] * len(ri))
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.int64)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return ids, mask


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-instructions", action="store_true")
    parser.add_argument("--fair", action="store_true",
                        help="issue #19 arms: the ablation gets the same gold fact as the instructed arm; "
                             "adapter in checkpoints/fair/, state in .cache/dialogue/fair/")
    add_budget_arguments(parser, iteration_aliases=("--max-steps",))
    parser.add_argument("--minutes", dest="max_seconds", type=lambda m: float(m) * 60, default=argparse.SUPPRESS,
                        help="deprecated: --max-seconds, in minutes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--last-layers", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="bf16: autocast the matrix products; auto: bf16 where the CPU has AVX512-BF16/AMX")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--state", type=Path, default=None, help="resumable training state (default: --fair only)")
    parser.add_argument("--save-every", type=float, default=300.0, help="seconds between saved states")
    parser.add_argument("--resume", action="store_true", help="continue from --state when it exists")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with_instructions = not args.no_instructions
    out = args.out or (FAIR_ADAPTERS if args.fair else ADAPTERS)[with_instructions]
    state_path = args.state or (FAIR_STATES[with_instructions] if args.fair else None)
    precision = resolve_precision(args.precision)
    knowledge = "gold" if with_instructions or args.fair else "nearest3"
    config = {"with_instructions": with_instructions, "knowledge": knowledge, "batch": args.batch, "lr": args.lr,
              "last_layers": args.last_layers, "rank": args.rank, "seed": args.seed, "precision": precision}

    data = corpus_data()
    train = corpus.examples(data, "train")
    random.Random(args.seed).shuffle(train)  # the same turn sequence for both arms
    kb = corpus.load_kb()
    retriever = AblationRetriever(kb) if knowledge == "nearest3" else None
    model = lm.base_model()
    tok = lm.tokenizer()
    params = lm.add_lora(model, args.last_layers, args.rank)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    start, seen, losses, wall_before = 0, 0, [], 0.0
    if state_path is not None and state_path.exists():
        if not args.resume:
            raise SystemExit(f"{state_path} exists: pass --resume to continue it, or remove it")
        saved = torch.load(state_path)
        differ = {k: (saved["config"].get(k), config[k]) for k in RESUME_KEYS if saved["config"].get(k) != config[k]}
        if differ:
            raise SystemExit(f"{state_path} was trained with other settings (saved, asked): {differ}")
        model.load_state_dict(saved["lora"], strict=False)
        opt.load_state_dict(saved["optimizer"])
        start, seen, losses, wall_before = saved["step"], saved["examples"], saved["losses"], saved["wall_s"]
        print(json.dumps({"resumed": str(state_path), "step": start, "examples": seen}), flush=True)  # noqa: T201
    model.train()
    started = last_save = mark = time.time()
    budget = Budget(args.iterations, args.max_seconds)
    done, stop = start, []
    if state_path is not None:  # `kill -TERM <pid>`: finish the step, save the state, stop
        signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    for step in budget.steps():
        if step < start:  # done before the resume: the schedule and the turns continue where they stopped
            continue
        batch = train[seen: seen + args.batch]
        seen += args.batch
        ids, mask = encode_batch(tok, prompts_for(batch, with_instructions, retriever), [e["text"] for e in batch])
        warm = min(1.0, (step + 1) / 5)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm
        with autocast(precision):
            loss = model.loss(ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        done = step + 1
        if (step + 1) % 5 == 0:
            print(json.dumps({"step": step + 1, "examples": seen, "loss": round(sum(losses[-5:]) / 5, 4),  # noqa: T201 - CLI output
                              "elapsed_s": round(time.time() - started),
                              "s_per_step": round((time.time() - mark) / min(5, done - start), 1)}), flush=True)
            mark = time.time()
        if state_path is not None and time.time() - last_save >= args.save_every:
            save_state(state_path, config, step + 1, seen, losses, wall_before + time.time() - started, model, opt)
            last_save = time.time()
        if stop:
            break
    wall = wall_before + time.time() - started
    if state_path is not None:
        save_state(state_path, config, done, seen, losses, wall, model, opt)
    if done < args.iterations and state_path is not None:
        # stopped by --max-seconds: the state is saved, no adapter is written until the budget is done
        print(json.dumps({"stopped_at_step": done, "of": args.iterations, "state": str(state_path),  # noqa: T201
                          "loss_last_10": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4)}))
        return
    models = ("smollm2_135m",) if knowledge == "gold" else ("smollm2_135m", "minilm_l6_v2")
    meta = {**config, "steps": done, "examples": seen, "alpha": 2.0 * args.rank, "threads": args.threads,
            "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
            "losses": [round(v, 4) for v in losses],
            "wall_s": round(wall), "corpus_seed": data["seed"],
            **provenance(done, args.seed, dialogue_data_version(data, *models), budget.record())}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"lora": {k: v.half() for k, v in lm.lora_state(model).items()}, "meta": meta}, out)
    print(json.dumps({k: v for k, v in meta.items() if k != "losses"}))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()

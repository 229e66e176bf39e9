"""Instruction predictor: frozen all-MiniLM-L6-v2 history embedding -> dialogue type + action.

    python -m services.dialogue.train_instruction     # ~6,000 training turns, validation for early stopping

The target slots follow from the action (``core.ACTIONS``); their values come from retrieval. The budget is
``--epochs`` over a fixed sample (already a step budget, no wall clock); the head's ``meta`` records the
iterations (optimiser steps) done, the seed and the data version.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from services.common.training import provenance
from services.dialogue import core, corpus, encoder
from services.dialogue.train_generator import CHECKPOINTS, corpus_data, dialogue_data_version

HEAD = CHECKPOINTS / "instruction_head.pt"


def sample(examples: list[dict], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return rng.sample(examples, min(n, len(examples)))


def featurise(examples: list[dict], cache: Path | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if cache is not None and cache.exists():
        emb = torch.load(cache)
    else:
        emb = encoder.encode([core.history_text(e["history"]) for e in examples])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(emb, cache)
    types = torch.tensor([core.TYPES.index(e["type"]) for e in examples])
    actions = torch.tensor([core.ACTION_NAMES.index(e["action"]) for e in examples])
    return emb, types, actions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    data = corpus_data()
    started = time.time()
    cache = Path(".cache/dialogue")
    train = sample(corpus.examples(data, "train"), args.train, args.seed)
    val = sample(corpus.examples(data, "validation"), args.validation, args.seed)
    xt, tt, at = featurise(train, cache / f"emb_train_{args.train}_{args.seed}.pt")
    xv, tv, av = featurise(val, cache / f"emb_val_{args.validation}_{args.seed}.pt")
    head = encoder.InstructionHead()
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-4)
    best, best_state, steps = -1.0, None, 0
    for epoch in range(args.epochs):
        head.train()
        perm = torch.randperm(len(xt))
        for s in range(0, len(xt), 128):
            i = perm[s: s + 128]
            lt, la = head(xt[i])
            loss = F.cross_entropy(lt, tt[i]) + F.cross_entropy(la, at[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
        head.eval()
        with torch.no_grad():
            lt, la = head(xv)
            acc = float(((lt.argmax(1) == tv) & (la.argmax(1) == av)).float().mean())
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in head.state_dict().items()}
            best_epoch = epoch
    meta = {"train_turns": len(train), "validation_turns": len(val), "validation_joint_accuracy": round(best, 4),
            "best_epoch": best_epoch, "epochs": args.epochs, "wall_s": round(time.time() - started),
            **provenance(steps, args.seed, dialogue_data_version(data, "minilm_l6_v2"), {"epochs": args.epochs})}
    torch.save({"head": best_state, "meta": meta}, HEAD)
    print(json.dumps(meta))  # noqa: T201 - CLI output


def load_head() -> encoder.InstructionHead:
    head = encoder.InstructionHead()
    head.load_state_dict(torch.load(HEAD)["head"])
    return head.eval()


if __name__ == "__main__":
    main()

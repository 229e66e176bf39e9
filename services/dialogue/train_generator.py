"""LoRA fine-tuning of SmolLM2-135M on the consultation corpus (CPU, one thread, fixed step budget).

    python -m services.dialogue.train_generator --iterations 23                    # with instructions
    python -m services.dialogue.train_generator --iterations 23 --no-instructions  # the ablation

``--iterations`` (old name ``--max-steps``) is the budget; ``--max-seconds`` (``--minutes`` in minutes, its
deprecated form) only stops a run early. The adapter's ``meta`` records the iterations done, the seed and
the data version (pinned weights, corpus seed and sha256).

With instructions the prompt holds the gold instruction and the gold knowledge fact (teacher forcing;
at test time they come from the instruction predictor and retrieval). Without, the prompt holds no
instruction and the three facts nearest to what the patient said (the retrieval the ablation also
uses at test time). Loss on the doctor's reply and the end token only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from pathlib import Path

import torch

from services.common.training import Budget, add_budget_arguments, data_version, provenance
from services.dialogue import core, corpus, lm

CHECKPOINTS = Path(__file__).parent / "checkpoints"
ADAPTERS = {True: CHECKPOINTS / "generator_lora.pt", False: CHECKPOINTS / "generator_noinst_lora.pt"}


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
    add_budget_arguments(parser, iteration_aliases=("--max-steps",))
    parser.add_argument("--minutes", dest="max_seconds", type=lambda m: float(m) * 60, default=argparse.SUPPRESS,
                        help="deprecated: --max-seconds, in minutes")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--last-layers", type=int, default=8)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with_instructions = not args.no_instructions
    out = args.out or ADAPTERS[with_instructions]

    data = corpus_data()
    train = corpus.examples(data, "train")
    random.Random(args.seed).shuffle(train)
    kb = corpus.load_kb()
    retriever = None if with_instructions else AblationRetriever(kb)
    model = lm.base_model()
    tok = lm.tokenizer()
    params = lm.add_lora(model, args.last_layers, args.rank)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    model.train()
    started, seen, losses = time.time(), 0, []
    budget = Budget(args.iterations, args.max_seconds)
    for step in budget.steps():
        batch = train[seen: seen + args.batch]
        seen += args.batch
        if retriever is None:
            prompts = [core.build_prompt(e["history"], core.instruction_text(e["type"], e["action"], e["field"]),
                                         e["knowledge"]) for e in batch]
        else:
            knowledge = retriever([e["history"] for e in batch])
            prompts = [core.build_prompt(e["history"], None, k) for e, k in zip(batch, knowledge, strict=True)]
        ids, mask = encode_batch(tok, prompts, [e["text"] for e in batch])
        warm = min(1.0, (step + 1) / 5)
        for g in opt.param_groups:
            g["lr"] = args.lr * warm
        loss = model.loss(ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 5 == 0:
            print(json.dumps({"step": step + 1, "examples": seen, "loss": round(sum(losses[-5:]) / 5, 4),  # noqa: T201 - CLI output
                              "elapsed_s": round(time.time() - started)}), flush=True)  # noqa: T201
    models = ("smollm2_135m",) if with_instructions else ("smollm2_135m", "minilm_l6_v2")
    meta = {"with_instructions": with_instructions, "steps": budget.completed, "examples": seen, "batch": args.batch,
            "lr": args.lr, "last_layers": args.last_layers, "rank": args.rank, "alpha": 2.0 * args.rank,
            "threads": args.threads, "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
            "wall_s": round(time.time() - started), "corpus_seed": data["seed"],
            **provenance(budget.completed, args.seed, dialogue_data_version(data, *models), budget.record())}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"lora": {k: v.half() for k, v in lm.lora_state(model).items()}, "meta": meta}, out)
    print(json.dumps(meta))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()

"""One non-streaming dialogue answer to a 4,000-digit message, with and without the prompt budget
(issue #25, item 8), beside an ordinary turn: the served generator's weights and the same prompt code
(`core.build_prompt`), in PyTorch in-process, greedy, ≤ 80 new tokens (the gateway's cap).

    python -m bench.dialogue_budget [--threads 2] [--skip-unbudgeted]

Prints, per case, the prompt tokens, the tokens answered and the seconds (planning + prefill + decoding).
"""

from __future__ import annotations

import argparse
import time

import torch

from services.dialogue import corpus, lm
from services.dialogue.evaluate import Planner, load_generators

ORDINARY = [{"role": "patient", "text": "I get heartburn after meals and a sour taste in my mouth."}]
DIGITS = [{"role": "patient", "text": "".join(str(i % 10) for i in range(4000))}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--skip-unbudgeted", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    planner, generator = Planner(corpus.load_kb()), load_generators([True])[True]
    tok = lm.tokenizer()
    end = tok.token_to_id(lm.END)
    counter = planner.count_tokens
    cases = [("ordinary turn", ORDINARY, True), ("4,000 digits, budget", DIGITS, True)]
    if not args.skip_unbudgeted:
        cases.append(("4,000 digits, no budget", DIGITS, False))
    lm.greedy(generator, tok.encode(planner(ORDINARY, True)[0]).ids, end, 4)  # warm-up
    for name, history, budgeted in cases:
        planner.count_tokens = counter if budgeted else None
        started = time.perf_counter()
        prompt, _ = planner(history, True)
        ids = tok.encode(prompt).ids
        answer = lm.greedy(generator, ids, end, args.max_new_tokens)
        print(f"{name}: {len(ids)} prompt tokens, {len(answer)} answered, {time.perf_counter() - started:.2f} s",
              flush=True)


if __name__ == "__main__":
    main()

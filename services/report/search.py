"""Greedy and beam search over a next-token function; NumPy only, so the Triton python-backend model
ships this file beside its model.py and PyTorch evaluation uses the very same code.

``step(tokens, rows)`` gets the prefixes ``(B, T)`` int64 and, for each, the index of the image it
belongs to (``rows``, so encoder outputs can be gathered) and returns log-probabilities ``(B, V)``.
Decoding starts from ``<bos>`` or from a given forced prefix (``<bos>`` + the finding plan, ``plan.py``),
which is not part of the returned ids.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BOS, EOS, PAD = 1, 2, 0
Step = Callable[[np.ndarray, np.ndarray], np.ndarray]


def greedy(step: Step, batch: int, max_len: int = 60, prefix: np.ndarray | None = None) -> list[list[int]]:
    """Token ids (without BOS/EOS and ``prefix``) for ``batch`` images; ``prefix (batch, P)`` starts each one."""
    tokens = np.full((batch, 1), BOS, dtype=np.int64) if prefix is None else np.asarray(prefix, dtype=np.int64)
    start = tokens.shape[1]
    done = np.zeros(batch, dtype=bool)
    rows = np.arange(batch)
    for _ in range(max_len):
        active = np.nonzero(~done)[0]
        if len(active) == 0:
            break
        logp = step(tokens[active], rows[active])
        nxt = np.full(batch, PAD, dtype=np.int64)
        nxt[active] = logp.argmax(-1)
        tokens = np.concatenate([tokens, nxt[:, None]], axis=1)
        done |= nxt == EOS
    return [_strip(row, start) for row in tokens]


def beam(step: Step, image: int = 0, beam_size: int = 3, max_len: int = 60, length_penalty: float = 1.0,
         block_repeat_ngram: int = 3, prefix: list[int] | None = None) -> list[int]:
    """Beam search for one image from ``prefix`` (default ``[BOS]``); score = sum log p / length**length_penalty
    over the generated tokens. Repeated trigrams blocked."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    start = [int(t) for t in prefix] if prefix is not None else [BOS]
    beams: list[tuple[list[int], float]] = [(start, 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(max_len):
        prefixes = np.array([b[0] for b in beams], dtype=np.int64)
        logp = step(prefixes, np.full(len(beams), image, dtype=np.int64))
        candidates = []
        for (seq, score), row in zip(beams, logp, strict=True):
            row = row.copy()
            _block(seq, row, block_repeat_ngram)
            for tok in np.argsort(row)[::-1][: beam_size * 2]:
                candidates.append((seq + [int(tok)], score + float(row[tok])))
        candidates.sort(key=lambda c: c[1], reverse=True)
        beams = []
        for seq, score in candidates:
            if seq[-1] == EOS:
                finished.append((seq, score / max(len(seq) - len(start), 1) ** length_penalty))
            else:
                beams.append((seq, score))
            if len(beams) == beam_size:
                break
        if not beams or (len(finished) >= beam_size and max(f[1] for f in finished) >
                         max(s / max(len(q) - len(start), 1) ** length_penalty for q, s in beams)):
            break
    if not finished:
        finished = [(seq, score / max(len(seq) - len(start), 1) ** length_penalty) for seq, score in beams]
    return _strip(np.array(max(finished, key=lambda f: f[1])[0]), len(start))


def _block(seq: list[int], row: np.ndarray, n: int) -> None:
    if n < 2 or len(seq) < n:
        return
    prefix = tuple(seq[-(n - 1):])
    for i in range(len(seq) - n + 1):
        if tuple(seq[i:i + n - 1]) == prefix:
            row[seq[i + n - 1]] = -np.inf


def _strip(row: np.ndarray, start: int = 1) -> list[int]:
    out = []
    for tok in row.tolist()[start:]:
        if tok in (EOS, PAD):
            break
        out.append(int(tok))
    return out

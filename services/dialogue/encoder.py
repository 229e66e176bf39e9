"""all-MiniLM-L6-v2 sentence encoder (mean pooling) and the instruction head on top of it.

    encode(texts) -> (N, 384) unit vectors
    InstructionEncoder(input_ids (B, T), attention_mask (B, T)) -> embedding (B, 384), type logits (B, 5),
        action logits (B, 10)          # the exported ``dialogue_encoder``
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import torch
from torch import nn

from services.dialogue import core

MAX_TOKENS = 128


def model_dir() -> Path:
    from services.common.datasets import fetch

    return fetch("minilm_l6_v2")


@cache
def _loaded() -> tuple[nn.Module, object]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer
    from transformers import AutoModel

    d = model_dir()
    model = AutoModel.from_pretrained(d, attn_implementation="eager").eval()
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    return model, tok


def tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    _, tok = _loaded()
    encs = [tok.encode(t).ids for t in texts]
    width = max(len(e) for e in encs)
    ids = torch.zeros(len(encs), width, dtype=torch.int64)
    mask = torch.zeros(len(encs), width, dtype=torch.int64)
    for i, e in enumerate(encs):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return ids, mask


class MeanPooled(nn.Module):
    """Sentence embedding as all-MiniLM-L6-v2 defines it: the mean of ``bert``'s last hidden states over the
    real (unmasked) tokens, L2-normalised. ``bert``: a transformers BERT-style model (here MiniLM, 384-d)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids (B, T)`` int64, ``attention_mask (B, T)`` int64 (1 token, 0 padding) → ``(B, H)`` float32
        unit vectors (``H = 384`` for MiniLM, ``T ≤ 128``).

        E.g. the ``dialogue_encoder`` export example (history and patient text): ``(2, 42)``, ``(2, 42) → (2, 384)``.
        """
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp(min=1e-9)


@torch.no_grad()
def encode(texts: list[str], batch: int = 32) -> torch.Tensor:
    model, _ = _loaded()
    pooled = MeanPooled(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.zeros(len(texts), 384)
    for s in range(0, len(texts), batch):
        idx = order[s: s + batch]
        ids, mask = tokenize([texts[i] for i in idx])
        out[idx] = pooled(ids, mask)
    return out


class InstructionHead(nn.Module):
    """Embedding of the history -> dialogue-type and action logits."""

    def __init__(self, dim: int = 384, hidden: int = 256) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1))
        self.type_head = nn.Linear(hidden, len(core.TYPES))
        self.action_head = nn.Linear(hidden, len(core.ACTION_NAMES))

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``emb (B, dim)`` → (type logits ``(B, 5)`` over ``core.TYPES``, action logits ``(B, 10)`` over
        ``core.ACTION_NAMES``).

        E.g. ``InstructionHead()`` on a batch of 8 embeddings: ``(8, 384) → (8, 5), (8, 10)``.
        """
        h = self.trunk(emb)
        return self.type_head(h), self.action_head(h)


class InstructionEncoder(nn.Module):
    """The exported ``dialogue_encoder``: MiniLM + mean pooling + instruction head."""

    def __init__(self, head: InstructionHead) -> None:
        super().__init__()
        self.pooled = MeanPooled(_loaded()[0])
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``input_ids (B, T)``, ``attention_mask (B, T)`` int64 → (``embedding (B, 384)`` float32 unit vectors,
        ``type_logits (B, 5)``, ``action_logits (B, 10)``); ``T ≤ 128`` (the tokenizer truncates).

        E.g. the export example (history and patient text, padded to 42 tokens):
        ``(2, 42), (2, 42) → (2, 384), (2, 5), (2, 10)``.
        """
        emb = self.pooled(input_ids, attention_mask)
        type_logits, action_logits = self.head(emb)
        return emb, type_logits, action_logits

"""KiUT re-implemented at CPU size: CNN visual extractor → 3-layer U-Transformer with a symptom graph and
an injected-knowledge distiller. No public code exists; this follows the paper's abstract and the
digest in METHODS.md §5 (3 layers, U-connection, symptom graph, distiller), with our own choices named here.

Shapes (d = 128, 8×8 = 64 visual tokens per level, F = 10 findings, K retrieved reports of L tokens):

    image (N, 1, 128, 128) → memories 3 × (N, 64, d), finding logits (N, F),
    clinical knowledge (N, F, d), contextual knowledge (N, K·L, d) + its padding mask (N, K·L)
    tokens (N, T) + the above → next-token logits (N, T, V)

``knowledge=False`` gives the plain transformer captioner; ``u_connection=False`` makes every decoder
layer attend to the last encoder level only. In every variant, ``finding_memory`` adds an embedding of the
predicted finding probabilities to every memory token and ``global_image`` adds a projection of the mean
last-level memory to every word embedding, so that the words see the findings without having to learn to
find them in 64 attention keys (trained as the paper's architecture alone, the decoder ignored the image).

    >>> model = KiUT(vocab_size=800, adjacency=np.eye(10), kb_tokens=np.zeros((4, 62)), kb_labels=np.eye(10)[:4])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.report.findings import NUM_FINDINGS
from services.report.reports import PAD


@dataclass(frozen=True)
class KiUTConfig:
    d_model: int = 128
    heads: int = 4
    ff: int = 256
    layers: int = 3
    dropout: float = 0.1
    max_len: int = 64
    retrieved: int = 2  # contextual knowledge: similar training reports per image
    knowledge: bool = True
    u_connection: bool = True
    image_size: int = 128
    global_image: bool = True  # add a projection of the mean last-level memory to every word position
    finding_memory: bool = True  # add an embedding of the finding probabilities to every memory token
    plan: bool = False  # decode after the finding plan prefix (plan.py); max_len must hold it and the report

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


POOLED = 96


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class VisualExtractor(nn.Module):
    """(N, 1, 128, 128) → three levels of (N, 64, d) tokens (stride-4, -8 and -16 maps pooled to 8×8) + (N, 96)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.stem = _conv(1, 12, 2)  # 64
        self.s1 = _conv(12, 24, 2)  # 32
        self.s2 = _conv(24, 48, 2)  # 16
        self.s3 = _conv(48, POOLED, 2)  # 8
        self.proj = nn.ModuleList([nn.Conv2d(c, d_model, 1) for c in (24, 48, POOLED)])

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``image (N, 1, S, S)`` (KiUT passes ``[-1, 1]``) → (3 levels ``(N, 64, d_model)``, pooled ``(N, 96)``);
        levels are the stride-4, -8 and -16 maps average-pooled to 8×8, pooled is the mean of the stride-16 map.

        E.g. the served model (``d_model=128``): ``(2, 1, 128, 128) → 3 × (2, 64, 128), (2, 96)``.
        """
        x1 = self.s1(self.stem(image))
        x2 = self.s2(x1)
        x3 = self.s3(x2)
        feats = [F.adaptive_avg_pool2d(x, 8) for x in (x1, x2, x3)]
        levels = [p(f).flatten(2).transpose(1, 2) for p, f in zip(self.proj, feats, strict=True)]
        return levels, x3.mean(dim=(2, 3))


class SymptomGraph(nn.Module):
    """Two GCN layers over the finding co-occurrence graph; node inputs conditioned on the image's finding
    probabilities (present/absent embeddings mixed by p). → (N, F, d) clinical knowledge."""

    def __init__(self, adjacency: np.ndarray, d_model: int) -> None:
        super().__init__()
        a = torch.as_tensor(adjacency, dtype=torch.float32) + torch.eye(len(adjacency))
        deg = a.sum(1).rsqrt()
        self.register_buffer("norm_adj", deg[:, None] * a * deg[None, :])
        self.nodes = nn.Parameter(torch.randn(len(adjacency), d_model) * 0.02)
        self.present = nn.Parameter(torch.randn(len(adjacency), d_model) * 0.02)
        self.absent = nn.Parameter(torch.randn(len(adjacency), d_model) * 0.02)
        self.w1, self.w2 = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """``probs (N, F)`` finding probabilities in ``[0, 1]`` → ``(N, F, d_model)`` node features.

        E.g. the served model (10 findings, ``d_model=128``): ``(2, 10) → (2, 10, 128)``.
        """
        p = probs.unsqueeze(-1)
        h = self.nodes + p * self.present + (1 - p) * self.absent
        h = F.relu(self.w1(self.norm_adj @ h))
        return self.w2(self.norm_adj @ h)


class Attention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters and float-mask semantics, written with
    shape-agnostic reshapes so the ONNX export keeps the token axis dynamic (the stock module's traced
    reshapes bake in the example's sequence length)."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, None]:
        """``query (N, Tq, d)``, ``key``/``value (N, Tk, d)``, ``attn_mask (Tq, Tk)`` and ``key_padding_mask (N, Tk)``
        additive float masks (0 / -inf) or ``None`` → (``(N, Tq, d)``, ``None``); ``need_weights`` is ignored.

        E.g. a decoder's visual cross-attention in the served model (13-token prefix, 64 memory tokens, ``d=128``):
        ``query (2, 13, 128)``, ``key``/``value (2, 64, 128) → (2, 13, 128)``.
        """
        d = query.shape[-1]
        hd = d // self.heads
        w, b = self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, w[:d], b[:d]).reshape(query.shape[0], -1, self.heads, hd).transpose(1, 2)
        k = F.linear(key, w[d:2 * d], b[d:2 * d]).reshape(key.shape[0], -1, self.heads, hd).transpose(1, 2)
        v = F.linear(value, w[2 * d:], b[2 * d:]).reshape(value.shape[0], -1, self.heads, hd).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(hd))
        if attn_mask is not None:
            scores = scores + attn_mask
        if key_padding_mask is not None:
            scores = scores + key_padding_mask[:, None, None, :]
        attn = F.dropout(torch.softmax(scores, dim=-1), self.dropout, self.training)
        out = (attn @ v).transpose(1, 2).reshape(query.shape[0], -1, d)
        return self.out_proj(out), None


class DecoderLayer(nn.Module):
    """One pre-norm KiUT decoder layer: causal self-attention, cross-attention to one visual memory level, and
    with ``cfg.knowledge`` the injected-knowledge distiller (attention to contextual and clinical knowledge,
    mixed with the visual result by a softmax gate), then a feed-forward block."""

    def __init__(self, cfg: KiUTConfig) -> None:
        super().__init__()
        d, h = cfg.d_model, cfg.heads
        self.self_attn = Attention(d, h, cfg.dropout)
        self.visual = Attention(d, h, cfg.dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(3)])
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ff), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.ff, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.knowledge = cfg.knowledge
        if cfg.knowledge:  # injected knowledge distiller
            self.context = Attention(d, h, cfg.dropout)
            self.clinical = Attention(d, h, cfg.dropout)
            self.gate = nn.Linear(4 * d, 3)

    def forward(self, x: torch.Tensor, causal: torch.Tensor, pad: torch.Tensor, memory: torch.Tensor,
                context: torch.Tensor | None, context_pad: torch.Tensor | None,
                clinical: torch.Tensor | None) -> torch.Tensor:
        """``x (N, T, d)``, ``causal (T, T)`` and ``pad (N, T)`` additive masks, ``memory (N, 64, d)``,
        ``context (N, K·L, d)`` + additive ``context_pad (N, K·L)`` and ``clinical (N, F, d)`` (or ``None``s
        without knowledge) → ``(N, T, d)``.

        E.g. the served model (13-token prefix, K·L = 2·42 = 84, F = 10, ``d=128``): ``x (2, 13, 128)``,
        ``memory (2, 64, 128)``, ``context (2, 84, 128)``, ``clinical (2, 10, 128) → (2, 13, 128)``.
        """
        q = self.norms[0](x)
        x = x + self.drop(self.self_attn(q, q, q, attn_mask=causal, key_padding_mask=pad, need_weights=False)[0])
        q = self.norms[1](x)
        v = self.visual(q, memory, memory, need_weights=False)[0]
        if self.knowledge and context is not None and clinical is not None:
            c = self.context(q, context, context, key_padding_mask=context_pad, need_weights=False)[0]
            g = self.clinical(q, clinical, clinical, need_weights=False)[0]
            gates = torch.softmax(self.gate(torch.cat([q, v, c, g], dim=-1)), dim=-1)
            v = gates[..., 0:1] * v + gates[..., 1:2] * c + gates[..., 2:3] * g
        x = x + self.drop(v)
        return x + self.drop(self.ffn(self.norms[2](x)))


class KiUT(nn.Module):
    """KiUT (Knowledge-injected U-Transformer, arXiv 2306.11345) radiology report generator at CPU size; see the
    module docstring for the architecture and our own additions.

    Args: ``vocab_size`` V (4 specials + words); ``adjacency`` (F, F) finding co-occurrence weights for the
    symptom graph; ``kb_tokens`` (R, L) int token ids and ``kb_labels`` (R, F) finding labels of the R training
    reports that retrieval draws the contextual knowledge from; ``config`` (:class:`KiUTConfig`).
    """

    def __init__(self, vocab_size: int, adjacency: np.ndarray, kb_tokens: np.ndarray, kb_labels: np.ndarray,
                 config: KiUTConfig | None = None) -> None:
        super().__init__()
        cfg = config or KiUTConfig()
        if vocab_size < 5:
            raise ValueError(f"vocab_size must be at least 5 (4 specials + words), got {vocab_size}")
        if np.shape(adjacency) != (NUM_FINDINGS, NUM_FINDINGS):
            raise ValueError(f"adjacency must be {NUM_FINDINGS}×{NUM_FINDINGS}, got {np.shape(adjacency)}")
        if len(kb_tokens) != len(kb_labels) or len(kb_tokens) < cfg.retrieved:
            raise ValueError("kb_tokens and kb_labels need the same number of reports, at least `retrieved`")
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.d_model
        self.visual = VisualExtractor(d)
        self.visual_pos = nn.Parameter(torch.randn(1, 64, d) * 0.02)
        self.encoder = nn.ModuleList([nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff, cfg.dropout, batch_first=True,
                                                                 norm_first=True) for _ in range(cfg.layers)])
        self.enc_norms = nn.ModuleList([nn.LayerNorm(d) for _ in range(cfg.layers)])
        self.finding_head = nn.Sequential(nn.Linear(POOLED + d, d), nn.ReLU(), nn.Linear(d, NUM_FINDINGS))
        self.embed = nn.Embedding(vocab_size, d, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_len, d) * 0.02)
        self.decoder = nn.ModuleList([DecoderLayer(cfg) for _ in range(cfg.layers)])
        self.out_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab_size)
        if cfg.global_image:
            self.global_image = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        if cfg.finding_memory:
            self.finding_embed = nn.Linear(NUM_FINDINGS, d)
        if cfg.plan:
            self.plan_mix = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d))
        if cfg.knowledge:
            self.graph = SymptomGraph(adjacency, d)
            kb_len = np.shape(kb_tokens)[1]
            self.register_buffer("kb_tokens", torch.as_tensor(np.asarray(kb_tokens), dtype=torch.long))
            labels = torch.as_tensor(np.asarray(kb_labels), dtype=torch.float32)
            self.register_buffer("kb_keys", F.normalize(labels, dim=1))
            # many reports share a label vector: break ties by index (lowest first) so that PyTorch and
            # ONNX Runtime's TopK retrieve the same reports; 1e-3 / K spacing stays above float error
            order = torch.arange(len(labels), dtype=torch.float32) / len(labels)
            self.register_buffer("kb_tiebreak", -1e-3 * order, persistent=False)
            self.kb_pos = nn.Parameter(torch.randn(1, cfg.retrieved, kb_len, d) * 0.02)

    # ---------------------------------------------------------------- encoder side
    def encode(self, image: torch.Tensor, exclude: torch.Tensor | None = None,
               visual_only: bool = False) -> dict[str, torch.Tensor]:
        """image (N, 1, S, S) in [0, 1] → memories, finding logits/probabilities and knowledge tokens.
        ``exclude`` (N,) masks one knowledge-base report per image (its own, during training);
        ``visual_only=True`` stops after the finding head (see ``condition``)."""
        if not torch.jit.is_tracing() and (image.dim() != 4 or image.shape[1] != 1):
            raise ValueError(f"image must be (N, 1, H, W), got {tuple(image.shape)}")
        levels, pooled = self.visual(image * 2 - 1)
        x = levels[0] + self.visual_pos
        memories = []
        for i, layer in enumerate(self.encoder):
            if i > 0:
                x = x + levels[i]
            x = layer(x)
            memories.append(self.enc_norms[i](x))
        logits = self.finding_head(torch.cat([pooled, memories[-1].mean(1)], dim=-1))
        probs = torch.sigmoid(logits)
        out = {"memory1": memories[0], "memory2": memories[1], "memory3": memories[2],
               "finding_logits": logits, "finding_probs": probs}
        return out if visual_only else self.condition(out, exclude)

    def condition(self, enc: dict[str, torch.Tensor], exclude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The steps after the visual path, which depend on the finding probabilities: an embedding of the
        probabilities added to every memory token (``finding_memory``), then the knowledge tokens."""
        probs = enc["finding_probs"]
        out = dict(enc)
        if self.cfg.finding_memory:
            f = self.finding_embed(probs).unsqueeze(1)
            out.update({k: enc[k] + f for k in ("memory1", "memory2", "memory3")})
        if self.cfg.knowledge:
            out.update(self.knowledge(probs, exclude))
        return out

    def knowledge(self, probs: torch.Tensor, exclude: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Finding probabilities (N, F) → clinical (symptom graph) and contextual (retrieved reports) tokens.
        Apart from ``encode`` so that training with a frozen visual path can start from cached probabilities."""
        out = {"clinical": self.graph(probs)}
        scores = F.normalize(probs, dim=1) @ self.kb_keys.T + self.kb_tiebreak
        if exclude is not None:
            scores = scores.masked_fill(F.one_hot(exclude.clamp(min=0), len(self.kb_keys)).bool()
                                        & (exclude >= 0)[:, None], -2.0)
        top = scores.topk(self.cfg.retrieved, dim=1).indices  # (N, K)
        tokens = self.kb_tokens[top]  # (N, K, L)
        ctx = self.embed(tokens) + self.kb_pos
        out["context"] = ctx.flatten(1, 2)
        out["context_pad"] = (tokens == PAD).flatten(1).float()
        return out

    # ---------------------------------------------------------------- decoder side
    def decode(self, tokens: torch.Tensor, memory1: torch.Tensor, memory2: torch.Tensor, memory3: torch.Tensor,
               context: torch.Tensor | None = None, context_pad: torch.Tensor | None = None,
               clinical: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (N, T) → logits (N, T, V)."""
        t = tokens.shape[1]
        x = self.embed(tokens) + self.pos[:, :t]
        if self.cfg.global_image:  # a direct path from the image to every word (cross-attention alone was ignored)
            x = x + self.global_image(memory3.mean(1)).unsqueeze(1)
        if self.cfg.plan:  # and from the plan (tokens 1…F-1 of the prefix): attention to the prefix alone learnt slowly
            x = x + self.plan_mix(self.embed(tokens[:, 1:NUM_FINDINGS]).sum(1)).unsqueeze(1)
        causal = torch.triu(torch.full((t, t), float("-inf"), device=tokens.device), diagonal=1)
        pad = (tokens == PAD).float().masked_fill(tokens == PAD, float("-inf"))
        memories = [memory1, memory2, memory3] if self.cfg.u_connection else [memory3] * 3
        ctx_pad = None
        if context_pad is not None:
            ctx_pad = context_pad.masked_fill(context_pad > 0.5, float("-inf"))
        for layer, memory in zip(self.decoder, memories, strict=True):
            x = layer(x, causal, pad, memory, context, ctx_pad, clinical)
        return self.out(self.out_norm(x))

    def forward(self, image: torch.Tensor, tokens: torch.Tensor,
                exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced training pass: ``image (N, 1, S, S)`` float32 in ``[0, 1]``, ``tokens (N, T)`` int64
        (``T ≤ max_len``), ``exclude (N,)`` int64 knowledge-base row to hide per image (-1 none) →
        (``logits (N, T, V)``, ``finding_logits (N, F)``).

        E.g. the served model (V = 807, F = 10): ``(2, 1, 128, 128)``, ``(2, 13) → (2, 13, 807), (2, 10)``.
        """
        enc = self.encode(image, exclude)
        logits = self.decode(tokens, **knowledge_inputs(enc))
        return logits, enc["finding_logits"]


def knowledge_inputs(enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = ("memory1", "memory2", "memory3", "context", "context_pad", "clinical")
    return {k: enc[k] for k in keys if k in enc}


class EncoderForExport(nn.Module):
    """image → (memory1, memory2, memory3, context, context_pad, clinical, finding_probs)."""

    def __init__(self, model: KiUT) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``image (N, 1, S, S)`` float32 in ``[0, 1]`` → ``memory1..3 (N, 64, d)``, ``context (N, K·L, d)``,
        ``context_pad (N, K·L)`` (1.0 = padding), ``clinical (N, F, d)``, ``finding_probs (N, F)``; needs
        ``knowledge=True``.

        E.g. the served model (d = 128, K·L = 2·42, F = 10): ``(2, 1, 128, 128)`` → ``3 × (2, 64, 128)``,
        ``(2, 84, 128)``, ``(2, 84)``, ``(2, 10, 128)``, ``(2, 10)``.
        """
        e = self.model.encode(image)
        names = ("memory1", "memory2", "memory3", "context", "context_pad", "clinical", "finding_probs")
        return tuple(e[n] for n in names)


class DecoderStepForExport(nn.Module):
    """One decode step: prefix tokens + encoder outputs → log-probabilities of the next token (N, V)."""

    def __init__(self, model: KiUT) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, memory1: torch.Tensor, memory2: torch.Tensor, memory3: torch.Tensor,
                context: torch.Tensor, context_pad: torch.Tensor, clinical: torch.Tensor) -> torch.Tensor:
        """``tokens (N, T)`` int64 prefix (``<bos>`` first) + the :class:`EncoderForExport` outputs (without
        ``finding_probs``) → ``(N, V)`` float32 log-probabilities of token ``T + 1``.

        E.g. the served model's export example (13-token prefix, V = 807): ``tokens (2, 13)``,
        ``memory1..3 (2, 64, 128)``, ``context (2, 84, 128)``, ``context_pad (2, 84)``, ``clinical (2, 10, 128)``
        → ``(2, 807)``.
        """
        logits = self.model.decode(tokens, memory1, memory2, memory3, context, context_pad, clinical)
        return torch.log_softmax(logits[:, -1], dim=-1)

"""SmolLM2-135M as a small explicit Llama with a KV cache, LoRA adapters, and its tokenizer.

The base weights come from ``fetch("smollm2_135m")`` (GGUF, dequantised by transformers once and
cached as a PyTorch state dict under ``.cache/dialogue``). Our own module, not transformers', is what
training, evaluation and the ONNX export run, so the served graph is exactly the trained one:

    forward(input_ids (B, S), past_key (B, L, Hkv, P, D), past_value) ->
        logits of the last position (B, V), present_key (B, L, Hkv, P+S, D), present_value
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

END = "<|im_end|>"


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 49152
    hidden: int = 576
    intermediate: int = 1536
    layers: int = 30
    heads: int = 9
    kv_heads: int = 3
    rope_theta: float = 100000.0
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class LoRALinear(nn.Module):
    """y = x Wᵀ + (α/r) · x Aᵀ Bᵀ with W frozen; B starts at zero so training starts from the base."""

    def __init__(self, base: nn.Linear, rank: int = 16, alpha: float = 32.0) -> None:
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features) → (..., out_features)``, like ``base``.

        E.g. a wrapped SmolLM2 ``k_proj`` (576 → 192) on a 12-token prompt: ``(1, 12, 576) → (1, 12, 192)``.
        """
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=False)
        out.weight.data = self.base.weight.data + self.scale * (self.lora_b @ self.lora_a)
        return out


class RMSNorm(nn.Module):
    """Llama's RMS norm: ``weight · x / sqrt(mean(x²) + eps)`` over the last axis (no centring, no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., dim) → (..., dim)``; e.g. SmolLM2 hidden states ``(1, 12, 576) → (1, 12, 576)``."""
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    """One Llama decoder layer: pre-norm grouped-query self-attention with rotary positions and a KV cache,
    then a pre-norm SwiGLU MLP, each with a residual."""

    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        d, hd = cfg.hidden, cfg.head_dim
        self.cfg = cfg
        self.q_proj = nn.Linear(d, cfg.heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.heads * hd, d, bias=False)
        self.gate_proj = nn.Linear(d, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(d, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, d, bias=False)
        self.input_layernorm = RMSNorm(d, cfg.eps)
        self.post_attention_layernorm = RMSNorm(d, cfg.eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                past_k: torch.Tensor, past_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer over ``S`` new positions after ``P`` cached ones (``Hkv = kv_heads``, ``Dh = head_dim``):

        ``x (B, S, hidden)``, ``cos``/``sin (1, 1, S, Dh)``, ``mask (1, 1, S, P+S)`` additive (0 / -inf),
        ``past_k``/``past_v (B, Hkv, P, Dh)`` → (``x (B, S, hidden)``, ``k``/``v (B, Hkv, P+S, Dh)``).

        E.g. SmolLM2-135M, a 12-token prompt, empty cache: ``x (1, 12, 576)``, ``past_k (1, 3, 0, 64)`` →
        ``(1, 12, 576)``, ``(1, 3, 12, 64)``, ``(1, 3, 12, 64)``.
        """
        b, s, _ = x.shape
        cfg = self.cfg
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, s, cfg.heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        q = q * cos + _rotate(q) * sin
        k = k * cos + _rotate(k) * sin
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        groups = cfg.heads // cfg.kv_heads
        kk = k.repeat_interleave(groups, dim=1)
        vv = v.repeat_interleave(groups, dim=1)
        att = (q @ kk.transpose(-1, -2)) / math.sqrt(cfg.head_dim) + mask
        out = (att.softmax(-1) @ vv).transpose(1, 2).reshape(b, s, cfg.heads * cfg.head_dim)
        x = x + self.o_proj(out)
        h = self.post_attention_layernorm(x)
        x = x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return x, k, v


class SmolLM(nn.Module):
    """Llama decoder with tied embeddings. ``forward`` is the exported, cached single-sequence step."""

    def __init__(self, cfg: LlamaConfig = LlamaConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.hidden, cfg.eps)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        self.register_buffer("inv_freq", inv, persistent=False)

    def empty_past(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        z = torch.zeros(batch, c.layers, c.kv_heads, 0, c.head_dim)
        return z, z.clone()

    def hidden_states(self, input_ids: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = input_ids.shape[1]
        p = past_key.shape[3]
        positions = torch.arange(s, dtype=torch.float32) + p
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        keys = torch.arange(s + p)
        allowed = keys[None, :] <= (torch.arange(s) + p)[:, None]
        mask = torch.zeros(s, s + p).masked_fill(~allowed, float("-inf"))[None, None]
        return self.run_layers(self.embed_tokens(input_ids), cos, sin, mask, past_key, past_value)

    def run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                   past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embedded tokens through every block with its cache → (normed hidden states, present keys, values)."""
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, mask, past_key[:, i], past_value[:, i])
            ks.append(k)
            vs.append(v)
        return self.norm(x), torch.stack(ks, dim=1), torch.stack(vs, dim=1)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.embed_tokens.weight.t()

    def forward(self, input_ids: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One cached step over ``S`` new tokens after ``P`` cached positions (``L`` layers):

        ``input_ids (B, S)`` int64, ``past_key``/``past_value (B, L, Hkv, P, Dh)`` float32 →
        (``logits (B, V)`` of the last position, ``present_key``/``present_value (B, L, Hkv, P+S, Dh)``).
        Start from :meth:`empty_past` (``P = 0``).

        E.g. SmolLM2-135M, the ``dialogue_generator`` export example (last 2 tokens of a 71-token prompt):
        ``(1, 2)``, ``(1, 30, 3, 69, 64)`` → ``(1, 49152)``, ``(1, 30, 3, 71, 64)``, ``(1, 30, 3, 71, 64)``.
        """
        h, k, v = self.hidden_states(input_ids, past_key, past_value)
        return self.logits(h[:, -1]), k, v

    def loss(self, input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy on the positions where ``target_mask`` (B, S) is true (right padding)."""
        pk, pv = self.empty_past(input_ids.shape[0])
        h, _, _ = self.hidden_states(input_ids, pk, pv)
        pred = h[:, :-1][target_mask[:, 1:]]
        return F.cross_entropy(self.logits(pred), input_ids[:, 1:][target_mask[:, 1:]])


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: SmolLM, last_layers: int = 8, rank: int = 16, alpha: float = 32.0) -> list[nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for layer in model.layers[-last_layers:]:
        for name in LORA_TARGETS:
            lora = LoRALinear(getattr(layer, name), rank, alpha)
            setattr(layer, name, lora)
            params += [lora.lora_a, lora.lora_b]
    return params


def lora_state(model: SmolLM) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def load_lora(model: SmolLM, state: dict[str, torch.Tensor], meta: dict) -> SmolLM:
    add_lora(model, meta["last_layers"], meta["rank"], meta["alpha"])
    model.load_state_dict(state, strict=False)
    return model


def merge_lora(model: SmolLM) -> SmolLM:
    for layer in model.layers:
        for name in LORA_TARGETS:
            module = getattr(layer, name)
            if isinstance(module, LoRALinear):
                setattr(layer, name, module.merged())
    return model.eval()


# ---- base weights and tokenizer ----------------------------------------------------------------------

def cache_dir() -> Path:
    path = Path(os.environ.get("MEDSTACK_DIALOGUE_CACHE", ".cache/dialogue"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _convert() -> None:
    """GGUF -> transformers (dequantised fp32) -> our state dict + tokenizer.json, cached."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.common.datasets import fetch

    src = fetch("smollm2_135m")
    hf = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    state = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model."):
            state[k.removeprefix("model.").replace("self_attn.", "").replace("mlp.", "")] = v
    torch.save(state, cache_dir() / "base.pt")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    tok.backend_tokenizer.save(str(cache_dir() / "tokenizer.json"))


def base_model() -> SmolLM:
    if not (cache_dir() / "base.pt").exists() or not (cache_dir() / "tokenizer.json").exists():
        _convert()
    model = SmolLM()
    missing, unexpected = model.load_state_dict(torch.load(cache_dir() / "base.pt"), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def tokenizer_path() -> Path:
    if not (cache_dir() / "tokenizer.json").exists():
        _convert()
    return cache_dir() / "tokenizer.json"


def tokenizer():  # noqa: ANN201 - tokenizers.Tokenizer
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path()))


@torch.no_grad()
def greedy(model: SmolLM, prompt_ids: list[int], end_id: int, max_new_tokens: int = 64) -> list[int]:
    """Greedy decoding with the KV cache (the same loop the Triton model runs)."""
    pk, pv = model.empty_past()
    ids = torch.tensor([prompt_ids])
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits, pk, pv = model(ids, pk, pv)
        nxt = int(logits[0].argmax())
        if nxt == end_id:
            break
        out.append(nxt)
        ids = torch.tensor([[nxt]])
    return out


def load_adapter(path: Path) -> SmolLM:
    """The base model with the LoRA adapter at ``path`` (unmerged)."""
    saved = torch.load(path)
    model = base_model()
    return load_lora(model, {k: v.float() for k, v in saved["lora"].items()}, saved["meta"]).eval()


def merged_generator(path: Path) -> SmolLM:
    return merge_lora(load_adapter(path))


def _rows_forward(model: SmolLM, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                  past_key: torch.Tensor, past_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``hidden_states`` with a position per row and a mask per row (left-padded batches):

    ``ids``/``positions (B, S)``, ``mask (B, 1, S, P+S)`` additive, ``past_* (B, L, Hkv, P, Dh)`` →
    last-position logits ``(B, V)``, ``present_* (B, L, Hkv, P+S, Dh)``.
    """
    freqs = positions.to(torch.float32)[..., None] * model.inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # (B, 1, S, Dh)
    cos, sin = emb.cos(), emb.sin()
    hidden, keys, values = model.run_layers(model.embed_tokens(ids), cos, sin, mask, past_key, past_value)
    return model.logits(hidden[:, -1]), keys, values


@torch.no_grad()
def greedy_batch(model: SmolLM, prompts: list[list[int]], end_id: int, max_new_tokens: int = 64) -> list[list[int]]:
    """:func:`greedy` for several prompts at once (left padding, a mask and positions per row): the same
    tokens up to float rounding, several times faster per turn on a CPU (one pass over the weights per step)."""
    b, width = len(prompts), max(len(p) for p in prompts)
    pad = torch.tensor([width - len(p) for p in prompts])
    ids = torch.zeros(b, width, dtype=torch.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
    keys = torch.arange(width)
    positions = (keys[None, :] - pad[:, None]).clamp(min=0)
    allowed = (keys[None, None, :] <= keys[None, :, None]) & (keys[None, None, :] >= pad[:, None, None])
    allowed |= torch.eye(width, dtype=torch.bool)[None]  # a padding row attends to itself (no empty softmax)
    mask = torch.zeros(b, 1, width, width).masked_fill(~allowed[:, None], float("-inf"))
    pk, pv = model.empty_past(b)
    logits, pk, pv = _rows_forward(model, ids, positions, mask, pk, pv)
    out: list[list[int]] = [[] for _ in range(b)]
    rows = list(range(b))  # the prompts still decoding; finished ones leave the batch (and the cache)
    for t in range(max_new_tokens):
        nxt = logits.argmax(-1)
        keep = []
        for j, i in enumerate(rows):
            if int(nxt[j]) != end_id:
                out[i].append(int(nxt[j]))
                keep.append(j)
        if not keep or t == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep)
            rows, nxt, pad, pk, pv = [rows[j] for j in keep], nxt[index], pad[index], pk[index], pv[index]
        allowed = torch.arange(width + t + 1)[None, :] >= pad[:, None]  # every real key so far and the new one
        mask = torch.zeros(len(rows), 1, 1, width + t + 1).masked_fill(~allowed[:, None, None], float("-inf"))
        logits, pk, pv = _rows_forward(model, nxt[:, None], (width - pad + t)[:, None], mask, pk, pv)
    return out

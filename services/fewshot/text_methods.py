"""Zero-shot, CoOp and ConES heads on the ``chest-vlm`` joint space (image features are unit 256-d vectors).

Every text head scores ``logit_c = s · cos(x, t_c) + b_c`` for multi-class tasks and
``logit_c = s · (cos(x, t_c⁺) − cos(x, t_c⁻)) + b_c`` for multi-label ones (``t⁺`` "there is X", ``t⁻`` "there is
no X"), ``s`` the VLM's learned temperature. With unit ``x`` this is ``heads.apply``'s affine map with
``weight = s · t`` (or ``s · (t⁺ − t⁻)``).

* zero-shot: ``t`` = text tower of the prompts, ``b = 0``.
* CoOp: ``t`` = text tower of ``[CLS] ctx₁…ctx₄ (no) name [SEP]``, the 4 context token embeddings shared by all
  classes (initialised from "findings : there is") and ``b`` learned; each step runs MiniLM forward and backward.
* ConES: ``t`` itself (unit-normalised in the forward pass) and ``b`` learned, initialised from zero-shot; the text
  encoder runs once (initialisation) and never in the loop.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from services.fewshot import vlm


def _scores(x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, bias: torch.Tensor,
            scale: float) -> torch.Tensor:
    cos = x @ F.normalize(pos, dim=-1).T
    if neg is not None:
        cos = cos - x @ F.normalize(neg, dim=-1).T
    return scale * cos + bias


def _arrays(pos: torch.Tensor, neg: torch.Tensor | None, bias: torch.Tensor, scale: float) -> dict[str, np.ndarray]:
    p = F.normalize(pos.detach(), dim=-1)
    out = {"class_embeddings": p.numpy(), "bias": bias.detach().numpy().copy(), "scale": np.array([scale])}
    if neg is not None:
        n = F.normalize(neg.detach(), dim=-1)
        out["negative_embeddings"] = n.numpy()
        out["weight"] = (scale * (p - n)).numpy()
    else:
        out["weight"] = (scale * p).numpy()
    return out


def prompt_embeddings(class_names: list[str], multi_label: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    text = vlm.load_text_tower()
    prompts = vlm.class_prompts(class_names, multi_label)
    neg = text.embed(prompts["negative"]) if multi_label else None
    return text.embed(prompts["positive"]), neg


def fit(method: str, class_names: list[str], feats: np.ndarray, y: np.ndarray, multi_label: bool,
        seed: int) -> dict[str, np.ndarray]:
    from services.fewshot import adapt as A

    scale = vlm.load_heads().scale
    c = len(class_names)
    if method == "zeroshot":
        pos, neg = prompt_embeddings(class_names, multi_label)
        return _arrays(pos, neg, torch.zeros(c), scale)
    x = F.normalize(torch.from_numpy(np.asarray(feats, np.float32)), dim=-1)
    target = torch.from_numpy(y)
    bias = torch.nn.Parameter(torch.zeros(c))
    if method == "cones":
        p0, n0 = prompt_embeddings(class_names, multi_label)
        pos = torch.nn.Parameter(p0.clone())
        neg = torch.nn.Parameter(n0.clone()) if n0 is not None else None
        params = [pos, bias] + ([neg] if neg is not None else [])
        opt = torch.optim.AdamW(params, lr=A.CONES_LR, weight_decay=A.TEXT_WD)
        for _ in range(A.TEXT_STEPS):
            loss = A.task_loss(_scores(x, pos, neg, bias, scale), target, multi_label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return _arrays(pos, neg, bias, scale)
    if method == "coop":
        return _fit_coop(class_names, x, target, multi_label, bias, scale)
    raise A.AdaptationError("unknown-method", f"{method!r} is not a text method")


def _fit_coop(class_names: list[str], x: torch.Tensor, target: torch.Tensor, multi_label: bool,
              bias: torch.nn.Parameter, scale: float) -> dict[str, np.ndarray]:
    from services.fewshot import adapt as A

    text = vlm.load_text_tower()
    cls, sep = text.cls_sep
    prefix = text.token_ids(vlm.PROMPT_PREFIX)
    if len(prefix) != A.COOP_CONTEXT:
        raise RuntimeError(f"CoOp context init {vlm.PROMPT_PREFIX!r} is {len(prefix)} tokens, not {A.COOP_CONTEXT}")
    ctx = torch.nn.Parameter(text.word_embeddings(prefix))
    names = [text.token_ids(vlm.display_name(n)) for n in class_names]
    negation = text.token_ids(vlm.NEGATION)
    # one padded batch of prompts: [CLS] ctx (no) name [SEP]; rows 0…C-1 positive, C…2C-1 negative
    rows = [(False, ids) for ids in names] + ([(True, ids) for ids in names] if multi_label else [])
    width = 2 + A.COOP_CONTEXT + max(len(negation) * neg + len(ids) for neg, ids in rows)
    fixed = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (neg, ids) in enumerate(rows):
        seq = [cls] + [0] * A.COOP_CONTEXT + (negation if neg else []) + ids + [sep]
        fixed[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    base = text.bert.embeddings.word_embeddings(fixed).detach()
    ctx_slot = torch.zeros(1, width, 1)
    ctx_slot[0, 1:1 + A.COOP_CONTEXT] = 1.0

    def class_embeddings() -> torch.Tensor:
        placed = torch.zeros(1, width, base.shape[-1])
        placed = placed.index_copy(1, torch.arange(1, 1 + A.COOP_CONTEXT), ctx.unsqueeze(0))
        return text.embed_tokens(base * (1 - ctx_slot) + placed, mask)

    opt = torch.optim.AdamW([{"params": [ctx], "lr": A.COOP_LR, "weight_decay": A.TEXT_WD},
                             {"params": [bias], "lr": A.COOP_BIAS_LR, "weight_decay": 0.0}])
    c = len(class_names)
    for _ in range(A.TEXT_STEPS):
        t = class_embeddings()
        loss = A.task_loss(_scores(x, t[:c], t[c:] if multi_label else None, bias, scale), target, multi_label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        t = class_embeddings()
    return _arrays(t[:c], t[c:] if multi_label else None, bias, scale) | {"context": ctx.detach().numpy()}

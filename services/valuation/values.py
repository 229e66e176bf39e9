"""Per-sample data values: Data SI and gradient norm, per parameter tensor and grouped.

Notation (../shared/METHODS.md §3a): θ_p a trainable tensor, g_i,p the gradient of sample i's
loss with respect to θ_p, BatchNorm in eval mode while scoring.

* **Data SI**: Δθ_p is the update the optimiser *would* make from the full-set gradient
  G = mean_i g_i using its current state (SGD momentum buffer, Adam moments); the value is
  `v_i,p = mean_elements(Δθ_p ⊙ g_i,p)`, a first-order estimate of how much sample i's loss
  changes under that update (negative: the update helps the sample).
* **Gradient norm**: `v_i,p = Σ_elements g_i,p²`.
* **Grouping**: per-tensor values averaged with the tensors' element counts as weights, either
  per top-level module (``n-dim``: `conv1, layer1, …, fc`) or over all tensors (``1-dim``).

Per-sample gradients come from `torch.func` (`functional_call` + `vmap` + `grad`), in chunks, and
are reduced to `(N, P)` values at once so no `(N, #params)` array is ever held.
`naive_per_sample_grads` (one backward per sample) is the reference the tests compare with.

Example::

    scores = score_samples(model, optimizer, x, y)         # x (N, C, H, W), y (N,)
    scores.si.shape, scores.gradnorm.shape                 # (N, P), (N, P)
    feats, groups = group_values(scores.si, scores.groups, scores.numels, "n-dim")   # (N, G)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

__all__ = [
    "GroupDims",
    "SampleScores",
    "chunk_size_for",
    "eval_mode",
    "full_gradient",
    "group_values",
    "naive_per_sample_grads",
    "optimizer_update",
    "per_sample_grads",
    "score_samples",
    "trainable_parameters",
]

# floats of per-sample gradients held at once (≈ 256 MB)
GRAD_BUDGET = 64_000_000


class GroupDims(StrEnum):
    """How per-tensor values are grouped: one group per top-level module, or a single group."""

    N_DIM = "n-dim"
    ONE_DIM = "1-dim"


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm (and dropout) in eval mode for scoring; the previous mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def chunk_size_for(model: nn.Module, budget: int = GRAD_BUDGET, most: int = 256) -> int:
    """Samples per vmap chunk so that their gradients fit in `budget` floats."""
    n_params = sum(p.numel() for p in trainable_parameters(model).values())
    return max(1, min(most, budget // max(1, n_params)))


def per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of each sample's cross-entropy loss: `{name: (B, *param.shape)}`, model in eval mode.

    `x (B, C, H, W)`, `y (B,)` int64. One vmapped call, so choose B with `chunk_size_for`.
    """
    params = {k: v.detach() for k, v in trainable_parameters(model).items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def sample_loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    with eval_mode(model):
        return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)


def naive_per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference: one forward and backward per sample (batch size 1), model in eval mode."""
    params = trainable_parameters(model)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    with eval_mode(model):
        for i in range(x.shape[0]):
            loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, list(params.values()))
            for k, g in zip(params, grads, strict=True):
                out[k].append(g.detach())
    return {k: torch.stack(v) for k, v in out.items()}


def full_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """G = (1/N) Σ_i ∇L_i over the whole set, model in eval mode (as the per-sample gradients)."""
    params = trainable_parameters(model)
    total = {k: torch.zeros_like(p) for k, p in params.items()}
    n = x.shape[0]
    with eval_mode(model):
        for start in range(0, n, batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            loss = F.cross_entropy(model(xb), yb, reduction="sum") / n
            for k, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
                total[k] += g
    return total


def optimizer_update(
    optimizer: torch.optim.Optimizer, model: nn.Module, g: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Δθ the optimiser would apply if `g` were the gradient now, from its current state; nothing changes.

    Supports SGD (momentum, dampening, nesterov, weight decay) and Adam/AdamW (amsgrad, decoupled
    weight decay), one or more parameter groups; `maximize` is refused.
    """
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    deltas: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, p in trainable_parameters(model).items():
            group = group_of.get(id(p))
            if group is None:
                raise ValueError(f"parameter {name!r} is not in the optimiser")
            if group.get("maximize", False):
                raise ValueError("optimisers with maximize=True are not supported")
            state = optimizer.state.get(p, {})
            if isinstance(optimizer, torch.optim.SGD):
                deltas[name] = _sgd_delta(p, g[name], group, state)
            elif isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
                decoupled = isinstance(optimizer, torch.optim.AdamW) or bool(group.get("decoupled_weight_decay", False))
                deltas[name] = _adam_delta(p, g[name], group, state, decoupled)
            else:
                raise ValueError(f"optimiser {type(optimizer).__name__} is not supported (SGD, Adam, AdamW)")
    return deltas


def _sgd_delta(p: torch.Tensor, g: torch.Tensor, group: dict, state: dict) -> torch.Tensor:
    d = g + group["weight_decay"] * p if group["weight_decay"] else g.clone()
    momentum = group["momentum"]
    if momentum:
        buf = state.get("momentum_buffer")
        buf = d.clone() if buf is None else momentum * buf + (1 - group["dampening"]) * d
        d = d + momentum * buf if group["nesterov"] else buf
    return -group["lr"] * d


def _adam_delta(p: torch.Tensor, g: torch.Tensor, group: dict, state: dict, decoupled: bool) -> torch.Tensor:
    lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    step = float(state["step"]) + 1 if "step" in state else 1.0
    if wd and not decoupled:
        g = g + wd * p
    m = beta1 * state["exp_avg"] + (1 - beta1) * g if "exp_avg" in state else (1 - beta1) * g
    v = beta2 * state["exp_avg_sq"] + (1 - beta2) * g * g if "exp_avg_sq" in state else (1 - beta2) * g * g
    if group.get("amsgrad", False):
        v = torch.maximum(state["max_exp_avg_sq"], v) if "max_exp_avg_sq" in state else v
    denom = v.sqrt() / math.sqrt(1 - beta2**step) + eps
    delta = -(lr / (1 - beta1**step)) * m / denom
    if wd and decoupled:
        # AdamW shrinks θ first: θ' = θ(1 − lr·wd) − step, so Δθ = −lr·wd·θ + (step on the shrunk θ)
        delta = delta - lr * wd * p
    return delta


@dataclass
class SampleScores:
    """Per-sample, per-tensor values: `si` (None when not asked for) and `gradnorm`, each `(N, P)`."""

    names: list[str]
    numels: np.ndarray
    groups: list[str]
    gradnorm: np.ndarray
    si: np.ndarray | None = None


def score_samples(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    data_si: bool = True,
    chunk: int | None = None,
    budget: int = GRAD_BUDGET,
    progress: Callable[[int, int], None] | None = None,
    fast_norms: bool = True,
) -> SampleScores:
    """Data SI (needs `optimizer`) and gradient norm of every sample, per trainable tensor.

    When all per-sample gradients fit in `budget` floats they are computed once, the full-set
    gradient is their mean, and Data SI follows; otherwise the full-set gradient comes from a
    batched backward first and the per-sample gradients are reduced chunk by chunk.
    `progress(done, total)` is called after each chunk.

    Without Data SI only the norms are needed: with `fast_norms` (and a model made of Linear, Conv2d
    and BatchNorm layers) they come from activations and output gradients
    (`services.valuation.grad_norms`, agreeing with the `torch.func` path to float rounding), never
    forming a per-sample gradient.
    """
    if data_si and optimizer is None:
        raise ValueError("Data SI needs the optimiser (its state defines the update)")
    params = trainable_parameters(model)
    names = list(params)
    n = x.shape[0]
    n_params = sum(p.numel() for p in params.values())
    chunk = chunk or chunk_size_for(model, budget)
    hold_all = data_si and n * n_params <= budget
    if not data_si and fast_norms:
        from services.valuation.grad_norms import per_sample_sq_norms, supported

        if supported(model):
            return _fast_gradnorm_scores(model, x, y, names, chunk, progress, per_sample_sq_norms)
    delta = None
    if data_si and optimizer is not None and not hold_all:
        delta = optimizer_update(optimizer, model, full_gradient(model, x, y))
    gradnorm = np.zeros((n, len(names)))
    si = np.zeros((n, len(names))) if data_si else None
    held: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for start in range(0, n, chunk):
        grads = per_sample_grads(model, x[start : start + chunk], y[start : start + chunk])
        stop = start + grads[names[0]].shape[0]
        for j, name in enumerate(names):
            flat = grads[name].flatten(1)
            gradnorm[start:stop, j] = flat.pow(2).sum(1).double().numpy()
            if hold_all:
                held[name].append(flat)
            elif si is not None and delta is not None:
                si[start:stop, j] = (flat * delta[name].flatten()).mean(1).double().numpy()
        if progress is not None:
            progress(stop, n)
    if hold_all and si is not None and optimizer is not None:
        stacked = {name: torch.cat(held[name]) for name in names}
        g = {name: stacked[name].mean(0).view_as(params[name]) for name in names}
        delta = optimizer_update(optimizer, model, g)
        for j, name in enumerate(names):
            si[:, j] = (stacked[name] * delta[name].flatten()).mean(1).double().numpy()
    numels = np.array([p.numel() for p in params.values()], dtype=np.int64)
    groups = [name.split(".", 1)[0] for name in names]
    return SampleScores(names=names, numels=numels, groups=groups, gradnorm=gradnorm, si=si)


def _fast_gradnorm_scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str], chunk: int,
                          progress: Callable[[int, int], None] | None,
                          norms_of: Callable[..., dict[str, torch.Tensor]]) -> SampleScores:
    n = x.shape[0]
    gradnorm = np.zeros((n, len(names)))
    for start in range(0, n, chunk):
        norms = norms_of(model, x[start : start + chunk], y[start : start + chunk])
        stop = start + norms[names[0]].shape[0]
        for j, name in enumerate(names):
            gradnorm[start:stop, j] = norms[name].double().numpy()
        if progress is not None:
            progress(stop, n)
    params = trainable_parameters(model)
    numels = np.array([p.numel() for p in params.values()], dtype=np.int64)
    return SampleScores(names=names, numels=numels, groups=[k.split(".", 1)[0] for k in names], gradnorm=gradnorm)


def group_values(
    values: np.ndarray, groups: list[str], numels: np.ndarray, dims: str | GroupDims
) -> tuple[np.ndarray, list[str]]:
    """Per-tensor values `(N, P)` → grouped `(N, G)`, each group the element-count-weighted mean.

    ``n-dim``: groups in first-appearance order of `groups` (top-level module names);
    ``1-dim``: one group named ``all``.
    """
    dims = GroupDims(dims)
    if values.ndim != 2 or values.shape[1] != len(groups) or len(numels) != len(groups):
        raise ValueError(f"values {values.shape} do not match {len(groups)} tensors / {len(numels)} sizes")
    weights = np.asarray(numels, dtype=np.float64)
    if dims is GroupDims.ONE_DIM:
        return (values @ weights / weights.sum())[:, None], ["all"]
    names = list(dict.fromkeys(groups))
    out = np.zeros((values.shape[0], len(names)))
    for k, group in enumerate(names):
        cols = [j for j, g in enumerate(groups) if g == group]
        w = weights[cols]
        out[:, k] = values[:, cols] @ w / w.sum()
    return out, names

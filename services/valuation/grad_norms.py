"""Per-sample squared gradient norms from activations and output gradients, no per-sample gradients held.

One forward and one backward of the chunk with ``reduction="sum"`` (model in eval mode, as
`values.per_sample_grads`, so samples do not interact through BatchNorm). For a layer with input
activations `a_i` and output gradients `g_i` of sample i (both per position):

* **Linear** (one position per sample): `‖∇W_i‖² = ‖a_i‖²·‖g_i‖²`; with extra positions (any leading
  dims) the Gram form `Σ_{s,t} (a_is·a_it)(g_is·g_it)`; bias `‖Σ_s g_is‖²`.
* **Conv2d** (groups = 1): with the input's patches `A_i (C_in·k·k, L)` and `G_i (C_out, L)`,
  `‖∇W_i‖² = ‖G_i A_iᵀ‖²`, either as that product — one weight-gradient convolution with the batch as
  groups, `C_out·C_in·k²` floats per sample for this layer only — or, when there are few positions, as
  the Gram form `Σ (A_iᵀA_i) ∘ (G_iᵀG_i)` on the unfolded input (`L²` per sample), whichever is cheaper
  in floating-point operations; bias `‖Σ_positions g_i‖²`.
* **BatchNorm** (eval mode: running statistics): `∇γ_i = Σ_positions g_i·x̂_i`, `∇β_i = Σ_positions g_i`,
  computed exactly (C values per sample).

In-place ReLUs are switched to out-of-place for the pass (a captured output must not be overwritten).
`supported(model)` tells whether every trainable tensor sits in one of these layers; otherwise
`values.score_samples` keeps the `torch.func` path.

Example::

    norms = per_sample_sq_norms(model, x, y)      # {name: (B,) float32}, as Σ_elements g_i,p² of per_sample_grads
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from services.valuation.values import eval_mode, trainable_parameters

__all__ = ["per_sample_sq_norms", "supported"]

_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Trainable parameter name → (its module, attribute name)."""
    out: dict[str, tuple[nn.Module, str]] = {}
    for mod_name, mod in model.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if p.requires_grad:
                out[f"{mod_name}.{p_name}" if mod_name else p_name] = (mod, p_name)
    return out


def supported(model: nn.Module) -> bool:
    """True when every trainable tensor belongs to a Linear, Conv2d (groups 1) or BatchNorm layer."""
    for mod, _ in _owners(model).values():
        if not isinstance(mod, _LAYERS):
            return False
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                           or isinstance(mod.padding, str)):
            return False
    return True


@contextlib.contextmanager
def _no_inplace(model: nn.Module) -> Iterator[None]:
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False  # type: ignore[assignment]
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True  # type: ignore[assignment]


def _gram(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`Σ_{s,t} (a_s·a_t)(g_s·g_t)` per sample for `a (B, S, I)`, `g (B, S, O)`."""
    return ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))


def _outer_or_gram(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`‖Σ_s g_s a_sᵀ‖²` per sample, `a (B, S, I)`, `g (B, S, O)`, by the cheaper of the two forms."""
    s, i, o = a.shape[1], a.shape[2], g.shape[2]
    if s == 1:
        return a.pow(2).sum((1, 2)) * g.pow(2).sum((1, 2))
    if s * s * (i + o) < s * i * o:
        return _gram(a, g)
    return (g.transpose(1, 2) @ a).pow(2).sum((1, 2))


def _conv_outer(mod: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`‖G_i A_iᵀ‖²` per sample: the batch as convolution groups, so one weight-gradient call gives each
    sample's `(C_out, C_in, k, k)` gradient of this layer (held for this layer only), then its norm."""
    b, c_in = x.shape[:2]
    weight = mod.weight.detach()
    per_sample = torch.ops.aten.convolution_backward(
        g.reshape(1, b * g.shape[1], *g.shape[2:]), x.reshape(1, b * c_in, *x.shape[2:]),
        weight.repeat(b, 1, 1, 1), None, list(mod.stride), list(mod.padding), list(mod.dilation), False, [0, 0], b,
        [False, True, False])[1]
    return per_sample.reshape(b, -1).pow(2).sum(1)


def _layer_norms(mod: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    b = x.shape[0]
    if isinstance(mod, nn.Linear):
        a, go = x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1])
        out = {"weight": _outer_or_gram(a, go)}
        if mod.bias is not None:
            out["bias"] = go.sum(1).pow(2).sum(1)
        return out
    if isinstance(mod, nn.Conv2d):
        go = g.flatten(2)  # (B, C_out, L)
        s, i, o = go.shape[2], mod.weight[0].numel(), go.shape[1]
        if s * s * (i + o) < s * i * o:  # few positions: the Gram form, on the unfolded input
            patches = F.unfold(x, mod.kernel_size, dilation=mod.dilation, padding=mod.padding, stride=mod.stride)
            out = {"weight": _gram(patches.transpose(1, 2), go.transpose(1, 2))}
        else:
            out = {"weight": _conv_outer(mod, x, g)}
        if mod.bias is not None:
            out["bias"] = go.sum(2).pow(2).sum(1)
        return out
    # BatchNorm in eval mode: x̂ from the running statistics
    assert isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if mod.running_mean is None or mod.running_var is None:
        raise ValueError("BatchNorm without running statistics is not supported")
    xhat = (x - mod.running_mean.view(shape)) / torch.sqrt(mod.running_var.view(shape) + mod.eps)
    dims = tuple(range(2, x.dim()))
    gw = (g * xhat).sum(dims) if dims else g * xhat
    gb = g.sum(dims) if dims else g
    out = {}
    if mod.weight is not None and mod.weight.requires_grad:
        out["weight"] = gw.pow(2).sum(1)
    if mod.bias is not None and mod.bias.requires_grad:
        out["bias"] = gb.pow(2).sum(1)
    return out


def per_sample_sq_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{name: (B,)}` squared norm of each sample's cross-entropy gradient per trainable tensor (eval mode)."""
    if not supported(model):
        raise ValueError("the model has trainable tensors outside Linear / Conv2d (groups 1) / BatchNorm layers")
    owners = _owners(model)
    modules = {id(mod): mod for mod, _ in owners.values()}
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured[id(mod)] = (inputs[0].detach(), output)

    handles = [m.register_forward_hook(hook) for m in modules.values()]
    try:
        with eval_mode(model), _no_inplace(model), torch.enable_grad():
            # the activations need a graph even though the parameters' own gradients are never formed
            params = trainable_parameters(model)
            logits = model(x)
            loss = F.cross_entropy(logits, y, reduction="sum")
            keys = list(captured)
            grads = torch.autograd.grad(loss, [captured[k][1] for k in keys])
            norms_by_module = {k: _layer_norms(modules[k], captured[k][0], g.detach())
                               for k, g in zip(keys, grads, strict=True)}
    finally:
        for h in handles:
            h.remove()
    return {name: norms_by_module[id(owners[name][0])][owners[name][1]] for name in params}

"""Per-sample gradient norms from activations and output gradients agree with torch.func on every layer type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from services.valuation.grad_norms import _gram, _outer_or_gram, per_sample_sq_norms, supported
from services.valuation.networks import build_model
from services.valuation.values import per_sample_grads, score_samples

TOL = 1e-4


def _worst_relative(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    ref = per_sample_grads(model, x, y)
    fast = per_sample_sq_norms(model, x, y)
    assert set(fast) == set(ref)
    worst = 0.0
    for name, g in ref.items():
        r = g.flatten(1).double().pow(2).sum(1)
        worst = max(worst, float(((fast[name].double() - r).abs() / r.clamp_min(1e-30)).max()))
    return worst


def _perturbed(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Running statistics and BN affine parameters away from their defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape))
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("family", ["small_cnn", "resnet18_w"])
def test_valuation_networks_agree_with_torch_func(family: str) -> None:
    torch.manual_seed(0)
    model = _perturbed(build_model(family, 1, 10, width=4), (1, 16, 16))
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 10, (6,))
    assert supported(model)
    assert _worst_relative(model, x, y) <= TOL
    # mode and in-place flags are restored
    assert model.training
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


class _Layers(nn.Module):
    """Conv2d with bias, stride, dilation and padding; both Gram and outer-product forms; BatchNorm1d;
    a Linear over extra positions (3-d input) and a plain Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, bias=True)   # L = 16: outer form
        self.conv_b = nn.Conv2d(3, 40, 3, stride=2, padding=1, bias=True)  # L = 4, 27 → 40: Gram form
        self.bn = nn.BatchNorm1d(40)
        self.seq = nn.Linear(4, 5)
        self.head = nn.Linear(40 * 5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv_b(torch.relu(self.conv_a(x))))            # (B, 40, 2, 2)
        h = self.bn(h.flatten(2).mean(2)).unsqueeze(2) * h.flatten(2)[:, :, :4]  # (B, 40, 4)
        h = torch.tanh(self.seq(h))                                       # (B, 40, 5): 40 positions
        return self.head(h.flatten(1))


def test_every_layer_form_agrees() -> None:
    torch.manual_seed(1)
    model = _perturbed(_Layers(), (2, 8, 8))
    x, y = torch.randn(5, 2, 8, 8), torch.randint(0, 4, (5,))
    assert _worst_relative(model, x, y) <= TOL


def test_gram_and_outer_forms_are_equal() -> None:
    torch.manual_seed(4)
    a, g = torch.randn(3, 7, 5, dtype=torch.float64), torch.randn(3, 7, 6, dtype=torch.float64)
    direct = torch.einsum("bso,bsi->boi", g, a).pow(2).sum((1, 2))
    torch.testing.assert_close(_gram(a, g), direct)
    torch.testing.assert_close(_outer_or_gram(a, g), direct)
    one = a[:, :1], g[:, :1]
    torch.testing.assert_close(_outer_or_gram(*one), torch.einsum("bso,bsi->boi", one[1], one[0]).pow(2).sum((1, 2)))


def test_dilated_conv_agrees() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=2, dilation=2), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 3))
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))
    assert _worst_relative(model, x, y) <= TOL


def test_score_samples_uses_it_and_agrees() -> None:
    torch.manual_seed(3)
    model = _perturbed(build_model("small_cnn", 1, 10, width=4), (1, 16, 16))
    x, y = torch.randn(20, 1, 16, 16), torch.randint(0, 10, (20,))
    fast = score_samples(model, None, x, y, data_si=False, chunk=7)
    slow = score_samples(model, None, x, y, data_si=False, chunk=7, fast_norms=False)
    assert fast.names == slow.names and fast.si is None
    np.testing.assert_allclose(fast.gradnorm, slow.gradnorm, rtol=TOL, atol=1e-12)


def test_unsupported_layers_fall_back() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert not supported(model)
    with pytest.raises(ValueError, match="outside"):
        per_sample_sq_norms(model, torch.randn(2, 2, 6, 6), torch.tensor([0, 1]))
    x, y = torch.randn(3, 2, 6, 6), torch.tensor([0, 1, 2])
    scores = score_samples(model, None, x, y, data_si=False)
    ref = per_sample_grads(model, x, y)
    np.testing.assert_allclose(scores.gradnorm[:, 0], ref["0.weight"].flatten(1).pow(2).sum(1).numpy(), rtol=1e-5)

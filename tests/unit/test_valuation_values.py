"""Per-sample gradients against the naive loop; the optimiser's would-be update; Data SI, GradNorm, grouping."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from services.valuation.networks import build_model, top_level_groups
from services.valuation.values import (
    full_gradient,
    group_values,
    naive_per_sample_grads,
    optimizer_update,
    per_sample_grads,
    score_samples,
    trainable_parameters,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread (the tensors are tiny; more threads only contend), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(family: str = "small_cnn", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(family, in_channels=1, num_classes=4, width=4)
    # non-trivial BatchNorm statistics, so eval mode differs from train mode
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(16, 1, 12, 12) * 2 + 0.5)
    return model


def _batch(n: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, 12, generator=g), torch.randint(0, 4, (n,), generator=g)


@pytest.mark.parametrize("family", ["small_cnn", "resnet18_w"])
def test_vmap_per_sample_grads_match_the_naive_loop(family: str) -> None:
    model = _model(family)
    model.train()  # scoring must switch BatchNorm to eval by itself and restore the mode
    x, y = _batch()
    fast = per_sample_grads(model, x, y)
    slow = naive_per_sample_grads(model, x, y)
    assert model.training
    assert fast.keys() == slow.keys() == trainable_parameters(model).keys()
    for name in fast:
        assert fast[name].shape == (7, *trainable_parameters(model)[name].shape)
        torch.testing.assert_close(fast[name], slow[name], rtol=1e-4, atol=1e-6)


def test_per_sample_grads_use_running_statistics_not_batch_statistics() -> None:
    """With BN in eval mode a sample's gradient does not depend on the other samples of the batch."""
    model = _model()
    x, y = _batch(6)
    alone = per_sample_grads(model, x[:1], y[:1])
    together = per_sample_grads(model, x, y)
    for name in alone:
        torch.testing.assert_close(alone[name][0], together[name][0], rtol=1e-5, atol=1e-7)


def test_full_gradient_is_the_mean_of_per_sample_gradients() -> None:
    model = _model()
    x, y = _batch(9)
    per = per_sample_grads(model, x, y)
    full = full_gradient(model, x, y, batch_size=4)
    for name in full:
        torch.testing.assert_close(full[name], per[name].mean(0), rtol=1e-4, atol=1e-7)


def _step_delta(model: torch.nn.Module, opt: torch.optim.Optimizer, g: dict[str, torch.Tensor], make) -> dict:
    """What a real optimiser step with gradient g changes, on deep copies."""
    m2 = copy.deepcopy(model)
    o2 = make(m2.parameters())
    o2.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the state tensors
    before = {k: p.detach().clone() for k, p in trainable_parameters(m2).items()}
    for k, p in trainable_parameters(m2).items():
        p.grad = g[k].clone()
    o2.step()
    return {k: p.detach() - before[k] for k, p in trainable_parameters(m2).items()}


OPTIMISERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-dampening": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-3),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.05),
}


@pytest.mark.parametrize("kind", list(OPTIMISERS))
@pytest.mark.parametrize("steps_before", [0, 3])
def test_optimizer_update_equals_the_step_the_optimiser_would_take(kind: str, steps_before: int) -> None:
    model = _model()
    opt = OPTIMISERS[kind](model.parameters())
    x, y = _batch(8)
    for _ in range(steps_before):  # build momentum / moments
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    state_before = copy.deepcopy(opt.state_dict())
    g = full_gradient(model, x, y)
    predicted = optimizer_update(opt, model, g)
    actual = _step_delta(model, opt, g, OPTIMISERS[kind])
    for name in predicted:
        # the real step subtracts from θ in float32, so its Δθ carries θ·eps rounding
        torch.testing.assert_close(predicted[name], actual[name], rtol=1e-4, atol=2e-7)
    # and nothing was changed
    assert str(opt.state_dict()) == str(state_before)


def test_unsupported_optimiser_is_refused() -> None:
    model = _model()
    with pytest.raises(ValueError, match="RMSprop"):
        optimizer_update(torch.optim.RMSprop(model.parameters()), model, full_gradient(model, *_batch()))


def test_data_si_and_gradnorm_by_definition() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = _batch(10)
    scores = score_samples(model, opt, x, y)
    per = naive_per_sample_grads(model, x, y)
    g = {k: v.mean(0) for k, v in per.items()}
    delta = {k: -0.1 * (g[k] + 1e-4 * p.detach()) for k, p in trainable_parameters(model).items()}
    for j, name in enumerate(scores.names):
        flat = per[name].flatten(1)
        np.testing.assert_allclose(scores.gradnorm[:, j], flat.pow(2).sum(1).numpy(), rtol=1e-4)
        np.testing.assert_allclose(scores.si[:, j], (flat * delta[name].flatten()).mean(1).numpy(),
                                   rtol=1e-3, atol=1e-12)
    assert scores.groups == top_level_groups(model)


def test_two_pass_scoring_equals_holding_all_gradients() -> None:
    model = _model("resnet18_w")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _batch(9)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    held = score_samples(model, opt, x, y)  # fits in the budget
    chunked = score_samples(model, opt, x, y, chunk=4, budget=1000)  # full gradient first, then chunks
    np.testing.assert_allclose(held.gradnorm, chunked.gradnorm, rtol=1e-5)
    np.testing.assert_allclose(held.si, chunked.si, rtol=1e-3, atol=1e-12)
    gradnorm_only = score_samples(model, None, x, y, data_si=False)
    assert gradnorm_only.si is None
    np.testing.assert_allclose(gradnorm_only.gradnorm, held.gradnorm, rtol=1e-5)


def test_grouping_weights_tensors_by_their_element_count() -> None:
    values = np.array([[1.0, 3.0, 10.0], [2.0, 2.0, 0.0]])
    groups, numels = ["conv1", "conv1", "fc"], np.array([1, 3, 4])
    n_dim, names = group_values(values, groups, numels, "n-dim")
    assert names == ["conv1", "fc"]
    np.testing.assert_allclose(n_dim, [[(1 + 9) / 4, 10.0], [2.0, 0.0]])
    one, names = group_values(values, groups, numels, "1-dim")
    assert names == ["all"]
    np.testing.assert_allclose(one[:, 0], [(1 + 9 + 40) / 8, (2 + 6) / 8])
    with pytest.raises(ValueError):
        group_values(values, groups[:2], numels, "n-dim")
    with pytest.raises(ValueError):
        group_values(values, groups, numels, "2-dim")

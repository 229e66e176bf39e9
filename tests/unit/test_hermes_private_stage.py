"""A transfer's tuned decoder stages as the new task's private copy: the new task gets the tuned network's output,
every other task the pretrained network's, at a tiny width; anything else changed is refused; the ONNX graph of a
network with a private copy agrees with PyTorch."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from export.onnx_export import check_parity, export_onnx
from export.registry import get_spec
from services.hermes.export_specs import HermesExport
from services.hermes.network import HermesConfig, HermesR
from services.hermes.private_stage import with_private_stages

TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8,
                    task_kernels=True)
NEW = 1  # the new task (spleen)


def _tuned(pretrained: HermesR, modules: list[str]) -> HermesR:
    """What task_transfer.py --also-tune writes: the pretrained network with the modules and the new task's
    table rows moved."""
    tuned = copy.deepcopy(pretrained)
    with torch.no_grad():
        for module in modules:
            for p in tuned.get_submodule(module).parameters():
                p.add_(0.3 * torch.randn_like(p))
        for fusion in tuned.fusions:
            fusion.task_table[NEW] += 0.5
        tuned.classifier.task_kernels[NEW] += 0.5  # type: ignore[index]
    return tuned.eval()


def _run(net: HermesR, tasks: list[int]) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return net(torch.randn(1, 1, 16, 32, 32), torch.tensor([tasks]), torch.tensor([0]))[0]


@pytest.mark.parametrize("modules", [["backbone.ups.3"], ["backbone.ups.2", "backbone.ups.3"]])
def test_the_new_task_gets_the_tuned_output_and_the_others_the_pretrained(modules: list[str]) -> None:
    torch.manual_seed(0)
    pretrained = HermesR(TINY).eval()
    tuned = _tuned(pretrained, modules)
    private = with_private_stages(tuned, modules, NEW, pretrained)
    assert private.config.private_stages == len(modules) and private.config.private_task == NEW
    tasks = [0, NEW, 2, 3]
    out, from_tuned, from_pretrained = _run(private, tasks), _run(tuned, tasks), _run(pretrained, tasks)
    assert torch.allclose(out[:, 1], from_tuned[:, 1], atol=1e-5)  # the new task: the transfer's output
    assert not torch.allclose(from_tuned[:, 0], from_pretrained[:, 0], atol=1e-3)  # shared tuning changes others
    others = [0, 2, 3]
    # the other tasks: the pretrained stages, i.e. the token-only transfer's output (the new task's token is in the
    # request, so it enters their attention, as it does in serving)
    token_only = _tuned(pretrained, [])
    assert torch.allclose(out[:, others], _run(token_only, tasks)[:, others], atol=1e-5)
    assert torch.allclose(_run(private, others), _run(pretrained, others), atol=1e-5)  # without it: the pretrained


def test_a_tuned_network_that_changed_anything_else_is_refused() -> None:
    torch.manual_seed(0)
    pretrained = HermesR(TINY).eval()
    tuned = _tuned(pretrained, ["backbone.ups.3"])
    with torch.no_grad():
        tuned.fusions[0].task_table[0] += 0.1  # another task's token moved
    with pytest.raises(ValueError, match="not the pretrained one"):
        with_private_stages(tuned, ["backbone.ups.3"], NEW, pretrained)
    with pytest.raises(ValueError, match="last decoder stages"):
        with_private_stages(_tuned(pretrained, ["backbone.ups.1"]), ["backbone.ups.1"], NEW, pretrained)


def test_config_needs_a_task_for_its_private_stages() -> None:
    with pytest.raises(ValueError, match="private_stages"):
        HermesR(dataclasses.replace(TINY, private_stages=1))
    with pytest.raises(ValueError, match="private_stages"):
        HermesR(dataclasses.replace(TINY, private_stages=3, private_task=1))


def test_onnx_parity_with_a_private_copy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pretrained = HermesR(TINY).eval()
    net = with_private_stages(_tuned(pretrained, ["backbone.ups.2", "backbone.ups.3"]),
                              ["backbone.ups.2", "backbone.ups.3"], NEW, pretrained)
    model = HermesExport(net).eval()
    spec = dataclasses.replace(get_spec("hermes_r"), build_model=lambda: model, parity_atol=1e-4)
    rng = np.random.default_rng(0)

    def feed(tasks: list[list[int]]) -> dict[str, np.ndarray]:
        return {"image": rng.uniform(-1, 1, (len(tasks), 1, 16, 32, 32)).astype(np.float32),
                "tasks": np.array(tasks, np.int64), "modality": np.zeros((len(tasks), 1), np.int64)}

    traced = feed([[0, NEW, 2]])
    path = tmp_path / "model.onnx"
    export_onnx(spec, model, traced, path)
    parity = check_parity(spec, model, path, [traced, feed([[3, 4]]), feed([[NEW], [0]])],
                          "tiny Hermes-R with a private copy of the last two stages; with and without its task")
    assert parity.ok and parity.max_abs <= 1e-4, parity

"""Hermes-R and the multi-head baseline: shapes, the batched prior gather, ONNX with a dynamic task count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.hermes.network import (
    CPU_CONFIG,
    HermesConfig,
    HermesR,
    MultiHeadUNet,
    count_parameters,
    gather_tokens,
    select_tasks,
)
from services.hermes.tasks import NUM_MODALITIES, NUM_TASKS

TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8)
TINY_KERNELS = HermesConfig(**{**TINY.to_dict(), "task_kernels": True})
TINY_NORMALISED = HermesConfig(**{**TINY_KERNELS.to_dict(), "normalised_kernels": True})
TINY_STATIC_BIAS = HermesConfig(**{**TINY_KERNELS.to_dict(), "static_bias": True})
SIDE = 32


def _image(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (batch, 1, SIDE, SIDE, SIDE)).astype(np.float32))


@pytest.mark.parametrize("tasks, modality", [
    ([[0]], [0]),
    ([[0, 1, 11]], [0]),
    ([[12, 13, -1], [0, 1, 2]], [1, 0]),
    ([[15], [3], [-1]], [1, -1, 0]),
])
def test_output_shapes_follow_the_task_list(tasks: list[list[int]], modality: list[int]) -> None:
    torch.manual_seed(0)
    net = HermesR(TINY).eval()
    t = torch.tensor(tasks)
    with torch.no_grad():
        seg, mod = net(_image(len(tasks)), t, torch.tensor(modality))
    assert seg.shape == (len(tasks), t.shape[1], SIDE, SIDE, SIDE)
    assert mod.shape == (len(tasks), NUM_MODALITIES)
    base = MultiHeadUNet(TINY).eval()
    with torch.no_grad():
        assert base(_image(len(tasks))).shape == (len(tasks), NUM_TASKS, SIDE, SIDE, SIDE)
        assert base(_image(len(tasks)), t).shape == seg.shape


def test_gather_equals_a_per_sample_loop() -> None:
    table = torch.randn(NUM_TASKS + 1, 6)
    index = torch.tensor([[0, 5, -1], [15, 15, 2]])
    loop = torch.stack([torch.stack([table[i] if i >= 0 else table[-1] for i in row.tolist()]) for row in index])
    assert torch.equal(gather_tokens(table, index), loop)
    modality_table = torch.randn(NUM_MODALITIES + 1, 3, 6)
    got = gather_tokens(modality_table, torch.tensor([[1], [-1]]))
    assert torch.equal(got[:, 0], torch.stack([modality_table[1], modality_table[-1]]))
    logits = torch.randn(2, NUM_TASKS, 2, 2, 2)
    picked = select_tasks(logits, index)
    assert torch.equal(picked[1, 0], logits[1, 15]) and torch.equal(picked[0, 1], logits[0, 5])
    assert torch.all(picked[0, 2] == -20.0)


def test_a_batch_gives_the_same_result_as_each_sample_alone() -> None:
    torch.manual_seed(1)
    net = HermesR(TINY).eval()
    image, tasks, modality = _image(2, seed=3), torch.tensor([[0, 4], [13, 12]]), torch.tensor([0, 1])
    with torch.no_grad():
        seg, mod = net(image, tasks, modality)
        for i in range(2):
            one, one_mod = net(image[i:i + 1], tasks[i:i + 1], modality[i:i + 1])
            assert torch.allclose(seg[i:i + 1], one, atol=1e-5) and torch.allclose(mod[i:i + 1], one_mod, atol=1e-5)


def test_a_static_task_kernel_changes_only_its_own_task() -> None:
    torch.manual_seed(2)
    net = HermesR(TINY_KERNELS).eval()
    image, tasks, modality = _image(1, seed=4), torch.tensor([[0, 4, -1]]), torch.tensor([0])
    with torch.no_grad():
        before, _ = net(image, tasks, modality)
        assert torch.count_nonzero(net.classifier.task_kernels) == 0  # starts as upstream's head
        net.classifier.task_kernels[4, -1] = 3.0  # task 4's bias
        after, _ = net(image, tasks, modality)
    assert torch.allclose(after[0, 1], before[0, 1] + 3.0, atol=1e-5)
    assert torch.equal(after[0, 0], before[0, 0]) and torch.equal(after[0, 2], before[0, 2])
    assert HermesR(TINY).classifier.task_kernels is None


def test_start_as_multihead_computes_the_multihead_network_and_still_learns_the_priors() -> None:
    torch.manual_seed(3)
    config = HermesConfig(**{**TINY_KERNELS.to_dict(), "start_as_multihead": True})
    hermes = HermesR(config)
    multihead = MultiHeadUNet(config)
    multihead.backbone.load_state_dict(hermes.backbone.state_dict())
    kernels = hermes.classifier.task_kernels.detach()[:-1]  # the null token's row has no channel
    with torch.no_grad():
        multihead.head.weight.copy_(kernels[:, :-1].reshape(*multihead.head.weight.shape))
        multihead.head.bias.copy_(kernels[:, -1])
    image, tasks = _image(1, seed=5), torch.tensor([[0, 4, 12]])
    seg, _ = hermes(image, tasks, torch.tensor([0]))
    assert torch.allclose(seg, multihead(image, tasks), atol=1e-5)
    seg.square().mean().backward()  # the zeroed layers get gradients: the priors can start to act
    block = hermes.fusions[0].blocks[0]
    assert block.f_attn.out.weight.grad.abs().sum() > 0 and block.f_mlp[-1].weight.grad.abs().sum() > 0
    assert hermes.classifier.mlp2[-1].weight.grad.abs().sum() > 0


def test_normalised_kernels_have_their_gain_as_norm() -> None:
    torch.manual_seed(4)
    net = HermesR(TINY_NORMALISED).eval()
    tasks = torch.tensor([[0, 4, 12]])
    captured: list[tuple] = []
    net.classifier.register_forward_hook(lambda module, inputs, output: captured.append(inputs))
    with torch.no_grad():
        net.classifier.kernel_log_gains[4] = np.log(3.0)
        net(_image(1, seed=6), tasks, torch.tensor([0]))
        kernels = net.classifier.kernels(captured[0][0], tasks)[0]
    assert torch.allclose(kernels[:, :-1].norm(dim=1), torch.tensor([1.0, 3.0, 1.0]), atol=1e-5)


def test_static_bias_is_the_task_kernel_bias_whatever_the_image() -> None:
    torch.manual_seed(5)
    net = HermesR(TINY_STATIC_BIAS).eval()
    tasks = torch.tensor([[0, 4, 12]])
    captured: list[tuple] = []
    net.classifier.register_forward_hook(lambda module, inputs, output: captured.append(inputs))
    with torch.no_grad():
        net.classifier.task_kernels[:, -1] = torch.arange(net.classifier.task_kernels.shape[0]).float()
        for seed in (6, 7):
            net(_image(1, seed=seed), tasks, torch.tensor([0]))
        kernels = [net.classifier.kernels(inputs[0], tasks)[0] for inputs in captured]
    assert torch.equal(kernels[0][:, -1], torch.tensor([0.0, 4.0, 12.0]))
    assert torch.equal(kernels[1][:, -1], kernels[0][:, -1])
    assert not torch.allclose(kernels[0][:, :-1], kernels[1][:, :-1])  # the weights still follow the image


def test_bad_configurations_and_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="task_kernels"):
        HermesR(HermesConfig(**{**TINY.to_dict(), "start_as_multihead": True}))
    with pytest.raises(ValueError, match="task_kernels"):
        HermesR(HermesConfig(**{**TINY.to_dict(), "normalised_kernels": True}))
    with pytest.raises(ValueError, match="task_kernels"):
        HermesR(HermesConfig(**{**TINY.to_dict(), "static_bias": True}))
    with pytest.raises(ValueError, match="channels"):
        HermesR(HermesConfig(channels=(8, 8, 8)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="head_dim"):
        HermesR(HermesConfig(channels=(8, 8, 12, 16, 16), head_dim=8))
    with pytest.raises(ValueError, match="multiples of 16"):
        HermesR(TINY)(torch.zeros(1, 1, 24, 32, 32), torch.tensor([[0]]), torch.tensor([0]))


def test_cpu_config_sizes() -> None:
    assert HermesConfig.from_dict(CPU_CONFIG.to_dict()) == CPU_CONFIG
    assert CPU_CONFIG.task_kernels and not HermesConfig.from_dict({}).task_kernels  # old checkpoints: upstream head
    assert 1_000_000 < count_parameters(HermesR()) < 3_000_000
    assert count_parameters(MultiHeadUNet()) < count_parameters(HermesR())


@pytest.mark.parametrize("config", [TINY, TINY_KERNELS, TINY_NORMALISED, TINY_STATIC_BIAS],
                         ids=["upstream_head", "task_kernels", "normalised_kernels", "static_bias"])
def test_onnx_export_with_a_dynamic_task_count_matches_torch(tmp_path, config: HermesConfig) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = HermesR(config).eval()
    if config.task_kernels:
        with torch.no_grad():
            net.classifier.task_kernels.normal_()
    path = tmp_path / "hermes_tiny.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (_image(1), torch.tensor([[0, 1]]), torch.tensor([0])), str(path),
                          input_names=["image", "tasks", "modality"], output_names=["seg", "modality_logits"],
                          dynamic_axes={"image": {0: "batch"}, "tasks": {0: "batch", 1: "tasks"},
                                        "modality": {0: "batch"}, "seg": {0: "batch", 1: "tasks"},
                                        "modality_logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for tasks, modality in (([[0, 1, 2, 10]], [0]), ([[12, 14, -1], [11, 0, 5]], [1, 0])):
        image = _image(len(tasks), seed=len(tasks[0]))
        feeds = {"image": image.numpy(), "tasks": np.array(tasks, np.int64), "modality": np.array(modality, np.int64)}
        seg, mod = session.run(None, feeds)
        with torch.no_grad():
            want_seg, want_mod = net(image, torch.tensor(tasks), torch.tensor(modality))
        assert seg.shape == tuple(want_seg.shape)
        assert np.abs(seg - want_seg.numpy()).max() < 1e-4
        assert np.abs(mod - want_mod.numpy()).max() < 1e-4

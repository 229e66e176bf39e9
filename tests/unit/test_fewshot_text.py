"""Few-shot text methods on the chest VLM, support sampling and the protocol's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from services.fewshot import adapt as A
from services.fewshot import encoders, networks, protocol, tasks, vlm
from services.fewshot.heads import Head, apply

needs_vlm = pytest.mark.skipif(not (encoders.vlm_checkpoint() / "model.pt").exists(),
                               reason="no VLM checkpoint (python -m services.fewshot.train_vlm)")


def test_prompts_read_like_reports() -> None:
    p = vlm.class_prompts(["pleural_effusion", "Nodule-Mass"], multi_label=True)
    assert p["positive"] == ["findings : there is pleural effusion", "findings : there is nodule mass"]
    assert p["negative"][0] == "findings : there is no pleural effusion"
    assert "negative" not in vlm.class_prompts(["a", "b"], multi_label=False)


@needs_vlm
@pytest.mark.parametrize("multi_label", [True, False])
def test_text_heads_live_in_the_joint_space(multi_label: bool) -> None:
    names = ["pleural_effusion", "cardiomegaly", "emphysema"]
    rng = np.random.default_rng(0)
    images = rng.random((6, *encoders.ENCODERS["chest-vlm"].input_shape), dtype=np.float32)
    labels = np.eye(3, dtype=np.float32)[np.arange(6) % 3] if multi_label else np.arange(6) % 3
    feats = networks.features("chest-vlm", images)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-4)
    for method in ("zeroshot", "coop", "cones"):
        head = A.adapt("chest-vlm", method, names, images, labels, multi_label, seed=0)
        assert head.arrays["weight"].shape == (3, 256)
        assert head.arrays["class_embeddings"].shape == (3, 256)
        assert ("negative_embeddings" in head.arrays) == multi_label
        back = Head.from_bytes(head.to_bytes())
        np.testing.assert_allclose(apply(back, feats), apply(head, feats), rtol=1e-5)


@needs_vlm
def test_zero_shot_needs_no_support() -> None:
    shape = encoders.ENCODERS["chest-vlm"].input_shape
    head = A.adapt("chest-vlm", "zeroshot", ["a", "b"], np.zeros((0, *shape), np.float32), np.zeros((0, 2)), True)
    assert head.arrays["weight"].shape == (2, 256)


@needs_vlm
def test_cones_moves_the_zero_shot_embeddings_towards_the_support(monkeypatch: pytest.MonkeyPatch) -> None:
    # the served rate (1e-4) keeps ConES near its text initialisation; a larger one shows the optimisation works
    monkeypatch.setattr(A, "CONES_LR", 1e-2)
    names = ["pleural_effusion", "cardiomegaly"]
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 256))
    y = np.arange(20) % 2
    feats = centres[y] + rng.normal(size=(20, 256)) * 0.2
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    zero = A.fit_on_features("chest-vlm", "zeroshot", names, feats, y, False, 0)
    cones = A.fit_on_features("chest-vlm", "cones", names, feats, y, False, 0)
    acc = [(apply(Head(m, "chest-vlm", names, False, a), feats).argmax(1) == y).mean() for m, a in
           (("zeroshot", zero), ("cones", cones))]
    assert acc[1] >= acc[0] and acc[1] > 0.9


def _toy_task(multi_label: bool) -> tasks.Task:
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0], [0, 1]], np.float32) if multi_label else np.arange(6) % 2
    x = np.zeros((6, 1, 2, 2), np.float32)
    return tasks.Task("toy", ("chest",), ["a", "b"], multi_label, x, y, x, y, "toy")


@pytest.mark.parametrize("multi_label", [True, False])
def test_support_draws_are_per_class_and_reproducible(multi_label: bool) -> None:
    task = _toy_task(multi_label)
    idx = tasks.draw_support(task, 1, seed=3)
    np.testing.assert_array_equal(idx, tasks.draw_support(task, 1, seed=3))
    y = task.pool_labels[idx]
    for j in range(2):
        assert ((y[:, j] > 0) if multi_label else (y == j)).any()
    assert len(tasks.draw_support(task, 10, seed=0)) <= 6


def test_metrics_of_perfect_and_reversed_scores() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[y]
    m = protocol.metrics(perfect, y, multi_label=False)
    assert m["accuracy"] == 1.0 and m["auc"] == 1.0
    ml = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
    m = protocol.metrics(ml, ml, multi_label=True)
    assert m["map"] == 1.0 and m["auc"] == 1.0
    assert protocol.metrics(1 - ml, ml, multi_label=True)["auc"] == 0.0

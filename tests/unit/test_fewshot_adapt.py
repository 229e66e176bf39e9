"""Few-shot adaptation: request checks and the feature-level methods on a separable toy support set."""

from __future__ import annotations

import numpy as np
import pytest

from services.fewshot import adapt as A
from services.fewshot import encoders, networks
from services.fewshot.heads import Head, apply


def _toy(multi_label: bool, n: int = 12, d: int = 16, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(c, d)) * 3
    y = np.arange(n) % c
    x = centres[y] + rng.normal(size=(n, d)) * 0.3
    return x.astype(np.float32), (np.eye(c, dtype=np.float32)[y] if multi_label else y)


@pytest.mark.parametrize("method", ["linear", "prototype"])
@pytest.mark.parametrize("multi_label", [True, False])
def test_feature_methods_separate_a_toy_set(method: str, multi_label: bool) -> None:
    x, y = _toy(multi_label)
    arrays = A.fit_on_features("chest", method, ["a", "b", "c"], x, y, multi_label, seed=0)
    head = Head(method, "chest", ["a", "b", "c"], multi_label, arrays).check()
    scores = apply(head, x)
    truth = y.argmax(1) if multi_label else y
    assert (scores.argmax(1) == truth).all()


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(1).random((n, *encoders.ENCODERS["chest"].input_shape), dtype=np.float32)


def test_request_errors_have_codes() -> None:
    images = _images(4)
    cases = [
        (dict(encoder="nope"), "unknown-encoder"),
        (dict(method="svm"), "unknown-method"),
        (dict(method="cones"), "method-needs-text-encoder"),
        (dict(labels=np.array([0, 0, 0, 0])), "class-without-examples"),
        (dict(labels=np.array([0, 1, 2, 0])), "bad-labels"),
        (dict(images=images[:, :, :64]), "bad-images"),
        (dict(class_names=["a", "a"]), "bad-classes"),
    ]
    for change, code in cases:
        request = dict(encoder="chest", method="linear", class_names=["a", "b"], images=images,
                       labels=np.array([0, 1, 0, 1]), multi_label=False) | change
        with pytest.raises(A.AdaptationError) as caught:
            A.adapt(**request)
        assert caught.value.code == code, change
    with pytest.raises(A.AdaptationError) as caught:
        A.adapt("chest", "linear", ["a", "b"], images, np.array([[1, 0], [1, 0], [1, 0], [0, 0]]), True)
    assert caught.value.code == "class-without-examples"


def test_adapt_on_the_chest_encoder_round_trips() -> None:
    images = _images(6)
    head = A.adapt("chest", "prototype", ["a", "b"], images, np.array([0, 1, 0, 1, 0, 1]), False, seed=2)
    assert head.meta["support_images"] == 6 and head.meta["adaptation_seconds"] >= 0
    feats = networks.features("chest", images)
    assert feats.shape == (6, encoders.ENCODERS["chest"].feature_dim)
    back = Head.from_bytes(head.to_bytes())
    np.testing.assert_allclose(apply(back, feats), apply(head, feats), rtol=1e-6)


def test_prompt_tuning_learns_a_prompt_of_the_input_shape() -> None:
    images = _images(4)
    head = A.adapt("chest", "prompt", ["a", "b"], images, np.array([0, 1, 0, 1]), False, seed=0)
    assert head.prompt is not None and head.prompt.shape == encoders.ENCODERS["chest"].input_shape
    assert np.abs(head.prompt).max() <= A.PROMPT_LIMIT + 1e-6
    scores = apply(head, networks.features("chest", images, prompt=head.prompt))
    assert scores.shape == (4, 2)


def test_encoders_follow_the_table() -> None:
    import torch

    for name in ("chest", "ct"):
        meta = encoders.ENCODERS[name]
        net = networks.load_encoder(name)
        x = torch.zeros(2, *meta.input_shape)
        assert tuple(net(x, x).shape) == (2, meta.feature_dim)
    patch = np.full((20, 40, 40), -1000.0, np.float32)
    assert encoders.preprocess("ct", patch).shape == encoders.ENCODERS["ct"].input_shape
    assert encoders.preprocess("ct", patch, spacing_zyx=(2.5, 0.7, 0.7)).shape == encoders.ENCODERS["ct"].input_shape
    radiograph = np.random.default_rng(0).random((300, 250)).astype(np.float32)
    assert encoders.preprocess("chest", radiograph).shape == encoders.ENCODERS["chest"].input_shape

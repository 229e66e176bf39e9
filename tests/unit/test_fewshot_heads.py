"""Few-shot heads: serialisation round trip and the one scoring formula (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from services.fewshot.heads import Head, HeadFormatError, apply, logits


def _head(multi_label: bool, with_prompt: bool = False) -> Head:
    rng = np.random.default_rng(0)
    arrays = {"weight": rng.normal(size=(3, 5)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}
    if with_prompt:
        arrays["prompt"] = rng.normal(size=(1, 8, 8)).astype(np.float32)
    return Head("linear", "chest", ["a", "b", "c"], multi_label, arrays, {"seed": 3, "normalize": True})


@pytest.mark.parametrize("multi_label", [True, False])
def test_round_trip_keeps_everything(multi_label: bool) -> None:
    head = _head(multi_label, with_prompt=True)
    back = Head.from_bytes(head.to_bytes())
    assert (back.method, back.encoder, back.class_names, back.multi_label) == ("linear", "chest", ["a", "b", "c"],
                                                                               multi_label)
    assert back.meta == head.meta
    assert set(back.arrays) == {"weight", "bias", "prompt"}
    for k, v in head.arrays.items():
        np.testing.assert_array_equal(back.arrays[k], v)
    assert back.prompt is not None and back.prompt.shape == (1, 8, 8)
    feats = np.random.default_rng(1).normal(size=(4, 5))
    np.testing.assert_array_equal(apply(back, feats), apply(head, feats))


def test_scores_are_probabilities() -> None:
    feats = np.random.default_rng(2).normal(size=(6, 5)) * 100
    multi = apply(_head(True), feats)
    single = apply(_head(False), feats)
    assert multi.shape == single.shape == (6, 3)
    assert ((multi >= 0) & (multi <= 1)).all() and ((single >= 0) & (single <= 1)).all()
    np.testing.assert_allclose(single.sum(1), 1.0, rtol=1e-5)


def test_features_are_normalised_first() -> None:
    head = _head(True)
    feats = np.random.default_rng(3).normal(size=(2, 5))
    np.testing.assert_allclose(logits(head, feats), logits(head, feats * 7.5))
    unnormalised = Head(head.method, head.encoder, head.class_names, True, head.arrays, {"normalize": False})
    assert not np.allclose(logits(unnormalised, feats), logits(unnormalised, feats * 7.5))


def test_bad_bytes_and_shapes_are_refused() -> None:
    with pytest.raises(HeadFormatError):
        Head.from_bytes(b"not a zip")
    head = _head(True)
    head.arrays["bias"] = np.zeros(2, np.float32)
    with pytest.raises(HeadFormatError):
        Head.from_bytes(head.to_bytes())
    with pytest.raises(ValueError):
        apply(_head(True), np.zeros((2, 4)))

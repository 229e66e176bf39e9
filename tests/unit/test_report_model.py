"""KiUT shapes, ablations, knowledge retrieval, ONNX export with a dynamic token axis, greedy/beam search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.report import search
from services.report.findings import NUM_FINDINGS
from services.report.model import DecoderStepForExport, EncoderForExport, KiUT, KiUTConfig, knowledge_inputs

V, KB, L = 40, 6, 9


def tiny(**overrides: object) -> KiUT:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    kb_tokens = rng.integers(4, V, (KB, L))
    kb_tokens[:, 0], kb_tokens[:, -2:] = 1, 0
    kb_labels = np.eye(NUM_FINDINGS)[:KB]
    cfg = KiUTConfig(d_model=32, heads=2, ff=64, dropout=0.0, retrieved=2, **overrides)  # type: ignore[arg-type]
    return KiUT(V, np.ones((NUM_FINDINGS, NUM_FINDINGS)) - np.eye(NUM_FINDINGS), kb_tokens, kb_labels, cfg).eval()


def test_shapes_and_knowledge_outputs() -> None:
    model = tiny()
    image = torch.rand(3, 1, 64, 64)
    enc = model.encode(image)
    assert enc["memory1"].shape == (3, 64, 32) and enc["finding_probs"].shape == (3, NUM_FINDINGS)
    assert enc["clinical"].shape == (3, NUM_FINDINGS, 32)
    assert enc["context"].shape == (3, 2 * L, 32) and enc["context_pad"].shape == (3, 2 * L)
    logits, finding_logits = model(image, torch.randint(4, V, (3, 7)))
    assert logits.shape == (3, 7, V) and finding_logits.shape == (3, NUM_FINDINGS)
    with pytest.raises(ValueError, match="image must be"):
        model.encode(torch.rand(3, 64, 64))


def test_decoder_is_causal_and_u_connection_matters() -> None:
    model = tiny()
    enc = model.encode(torch.rand(2, 1, 64, 64))
    tokens = torch.randint(4, V, (2, 6))
    full = model.decode(tokens, **knowledge_inputs(enc))
    prefix = model.decode(tokens[:, :4], **knowledge_inputs(enc))
    torch.testing.assert_close(full[:, :4], prefix, atol=1e-5, rtol=1e-5)
    # with the U-connection, changing the first memory level changes the words; without it, it does not
    shifted = knowledge_inputs(enc) | {"memory1": enc["memory1"] + 1.0}
    assert not torch.allclose(model.decode(tokens, **shifted), full)
    no_u = tiny(u_connection=False)
    enc2 = no_u.encode(torch.rand(2, 1, 64, 64))
    base = no_u.decode(tokens, **knowledge_inputs(enc2))
    torch.testing.assert_close(no_u.decode(tokens, **(knowledge_inputs(enc2) | {"memory1": enc2["memory1"] + 1})),
                               base)


def test_plain_variant_has_no_knowledge_and_retrieval_excludes_self() -> None:
    plain = tiny(knowledge=False)
    assert "context" not in plain.encode(torch.rand(1, 1, 64, 64)) and not hasattr(plain, "graph")
    model = tiny()
    image = torch.rand(4, 1, 64, 64)
    probs = model.encode(image)["finding_probs"]
    top = (torch.nn.functional.normalize(probs, dim=1) @ model.kb_keys.T + model.kb_tiebreak).argmax(1)
    excluded = model.encode(image, exclude=top)
    kept = model.encode(image, exclude=torch.full((4,), -1))
    first = model.kb_tokens[top]
    assert not torch.equal(excluded["context"][:, :L], model.embed(first) + model.kb_pos[:, 0])
    torch.testing.assert_close(kept["context"][:, :L], model.embed(first) + model.kb_pos[:, 0])


def test_symptom_graph_is_conditioned_on_probabilities() -> None:
    model = tiny()
    low = model.graph(torch.zeros(1, NUM_FINDINGS))
    high = model.graph(torch.ones(1, NUM_FINDINGS))
    assert low.shape == (1, NUM_FINDINGS, 32) and not torch.allclose(low, high)


@pytest.mark.parametrize("planned", [False, True])
def test_onnx_export_keeps_the_token_axis_dynamic(tmp_path: Path, planned: bool) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.backends.mha.set_fastpath_enabled(False)
    model = tiny(plan=planned)  # with the plan, the first 10 tokens are <bos> + plan (plan_mix reads them)
    image = torch.rand(2, 1, 128, 128)  # the served size: 8×8 tokens at every level
    enc_path, dec_path = tmp_path / "enc.onnx", tmp_path / "dec.onnx"
    names = ["memory1", "memory2", "memory3", "context", "context_pad", "clinical"]
    torch.onnx.export(EncoderForExport(model).eval(), (image,), str(enc_path), input_names=["image"],
                      output_names=[*names, "finding_probs"], dynamic_axes={"image": {0: "b"}}, dynamo=False)
    enc = model.encode(image)
    feeds = tuple(enc[n] for n in names)
    tokens = torch.randint(4, V, (2, 12 if planned else 5))
    dynamic = {"tokens": {0: "b", 1: "t"}} | {n: {0: "b"} for n in names}
    torch.onnx.export(DecoderStepForExport(model).eval(), (tokens, *feeds), str(dec_path),
                      input_names=["tokens", *names], output_names=["log_probs"], dynamic_axes=dynamic, dynamo=False)
    e_sess, d_sess = ort.InferenceSession(str(enc_path)), ort.InferenceSession(str(dec_path))
    outs = dict(zip([*names, "finding_probs"], e_sess.run(None, {"image": image.numpy()}), strict=True))
    np.testing.assert_allclose(outs["finding_probs"], enc["finding_probs"].detach().numpy(), atol=1e-5)
    for length in (10, 13, 20) if planned else (1, 3, 12):
        t = torch.randint(4, V, (2, length))
        got = d_sess.run(None, {"tokens": t.numpy(), **{n: outs[n] for n in names}})[0]
        with torch.no_grad():
            want = DecoderStepForExport(model).eval()(t, *feeds).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


def fixed_step(table: dict[tuple[int, ...], dict[int, float]], vocab: int = 6):  # noqa: ANN201
    """A decoder whose next-token log-probabilities depend only on the prefix, from ``table``."""

    def step(tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        out = np.full((len(tokens), vocab), -20.0)
        for i, prefix in enumerate(tokens):
            for tok, logp in table.get(tuple(int(t) for t in prefix), {2: 0.0}).items():
                out[i, tok] = logp
        return out

    return step


def test_greedy_and_beam_search() -> None:
    # greedy takes 4 (p .6) then is stuck with a poor continuation; beam finds 5 → 3 → EOS
    table = {(1,): {4: np.log(0.6), 5: np.log(0.4)}, (1, 4): {3: np.log(0.35), 2: np.log(0.3)},
             (1, 5): {3: np.log(0.95)}, (1, 5, 3): {2: 0.0}, (1, 4, 3): {2: 0.0}}
    step = fixed_step(table)
    assert search.greedy(step, 2, 10) == [[4, 3], [4, 3]]
    assert search.beam(step, 0, 3, 10) == [5, 3]
    assert search.beam(step, 0, 1, 10) == search.greedy(step, 1, 10)[0]
    with pytest.raises(ValueError, match="beam_size"):
        search.beam(step, 0, 0)
    loop = fixed_step({}, 6)  # EOS right away
    assert search.greedy(loop, 1, 5) == [[]]

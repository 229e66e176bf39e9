"""The finding plan (services/report/plan.py): the prefix the decoder writes after, built the same way in training
(from the reference text), in evaluation and in the Triton model (from the head's calibrated calls)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.report import plan, search, train
from services.report.findings import ABNORMAL, FINDINGS, NUM_FINDINGS
from services.report.model import KiUT, KiUTConfig, knowledge_inputs
from services.report.reports import PAD, Vocabulary


def vocab() -> Vocabulary:
    return train.with_plan(Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>", "heart", "enlarged", "clear", "."]))


def test_plan_words_are_appended_and_found_by_position() -> None:
    v = vocab()
    assert v.words[:8] == ["<pad>", "<bos>", "<eos>", "<unk>", "heart", "enlarged", "clear", "."]
    assert v.words[8:] == plan.words(ABNORMAL) and len(plan.words(ABNORMAL)) == 2 * len(ABNORMAL)
    assert train.plan_index(len(v)) == {w: v.index[w] for w in plan.words(ABNORMAL)}
    assert train.with_plan(v).words == v.words  # idempotent


def test_prefix_is_bos_then_one_token_per_finding() -> None:
    v = vocab()
    present = np.zeros((2, len(ABNORMAL)), dtype=bool)
    present[1, ABNORMAL.index("pleural_effusion")] = True
    out = plan.prefix(present, ABNORMAL, v.index)
    assert out.shape == (2, 1 + len(ABNORMAL)) and out.dtype == np.int64 and (out[:, 0] == 1).all()
    assert [v.words[i] for i in out[1, 1:3]] == ["<-cardiomegaly>", "<+pleural_effusion>"]
    with pytest.raises(ValueError, match="present must be"):
        plan.prefix(present[:, :3], ABNORMAL, v.index)


def test_training_plan_is_what_the_text_affirms() -> None:
    v = vocab()
    out = train.text_plan(["the heart is enlarged . no pleural effusion .", "the lungs are clear ."], v)
    words = [[v.words[i] for i in row[1:]] for row in out]
    assert words[0][ABNORMAL.index("cardiomegaly")] == "<+cardiomegaly>"
    assert words[0][ABNORMAL.index("pleural_effusion")] == "<-pleural_effusion>"  # negated: absent
    assert all(w.startswith("<-") for w in words[1])


def test_head_calls_use_the_calibrated_thresholds_and_skip_unchecked_findings() -> None:
    thresholds = {name: {"threshold": 0.5, "checked": True} for name in FINDINGS}
    thresholds["pleural_effusion"] = {"threshold": 0.3, "checked": True}
    thresholds["fracture"] = {"threshold": 0.1, "checked": False}
    probs = np.zeros((1, len(FINDINGS)))
    probs[0, FINDINGS.index("pleural_effusion")] = 0.35  # above its own threshold, below 0.5
    probs[0, FINDINGS.index("fracture")] = 0.99  # not validated: never planned
    probs[0, FINDINGS.index("cardiomegaly")] = 0.49
    calls = plan.head_calls(probs, FINDINGS, thresholds, ABNORMAL)
    assert [n for n, on in zip(ABNORMAL, calls[0], strict=True) if on] == ["pleural_effusion"]


def test_planned_sequences_ignore_the_plan_positions() -> None:
    tokens = np.array([[1, 4, 5, 2, PAD]])
    prefix = np.array([[1, 20, 21, 22]])
    inputs, targets = train.planned(tokens, prefix)
    assert inputs.tolist() == [[1, 20, 21, 22, 4, 5, 2]]
    assert targets.tolist() == [[PAD, PAD, PAD, 4, 5, 2, PAD]]  # the first word is predicted from the full plan
    inputs, targets = train.planned(tokens, None)
    assert inputs.tolist() == [[1, 4, 5, 2]] and targets.tolist() == [[4, 5, 2, PAD]]


def test_search_starts_after_the_prefix_and_leaves_it_out() -> None:
    vocab_size = 12

    def step(tokens: np.ndarray, rows: np.ndarray) -> np.ndarray:
        # the next token is the last one + 1 until 9, then EOS: the output shows where decoding started
        logp = np.full((len(tokens), vocab_size), -10.0)
        nxt = np.where(tokens[:, -1] >= 9, 2, tokens[:, -1] + 1)
        logp[np.arange(len(tokens)), nxt] = 0.0
        return logp

    prefix = np.array([[1, 6], [1, 8]])
    assert search.greedy(step, 2, 10, prefix) == [[7, 8, 9], [9]]
    assert search.beam(step, 0, 2, 10, prefix=[1, 6]) == [7, 8, 9]
    assert search.greedy(step, 1, 10) == [[]]  # from <bos> (1) the next token is EOS (2): an empty report


def test_a_trained_decoder_follows_the_plan_not_the_prior() -> None:
    """Tiny KiUT on a frozen visual path (as stage 2): with the plan it writes the finding's sentence whenever it is
    planned, although that is the rarer text (the normal sentence is 3× as common) and the images say nothing."""
    torch.manual_seed(0)
    v = vocab()
    cfg = KiUTConfig(d_model=32, heads=2, ff=64, dropout=0.0, retrieved=2, plan=True, max_len=16)
    kb_tokens = np.array([v.encode("clear ."), v.encode("heart enlarged .")[:4]])
    model = KiUT(len(v), np.zeros((NUM_FINDINGS, NUM_FINDINGS)), kb_tokens, np.eye(NUM_FINDINGS)[:2], cfg)
    texts = ["heart enlarged .", "clear .", "clear .", "clear ."] * 2
    tokens = np.array([v.encode(t) + [PAD] * (3 - len(t.split())) for t in texts])
    inputs, targets = train.planned(tokens, train.text_plan(texts, v))
    with torch.no_grad():
        memory = knowledge_inputs(model.eval().encode(torch.rand(len(texts), 1, 32, 32)))
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("visual")], lr=3e-3)
    model.train()
    for _ in range(40):
        logits = model.decode(torch.from_numpy(inputs), **memory)
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.from_numpy(targets), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    present = np.zeros((2, len(ABNORMAL)), dtype=bool)
    present[0, ABNORMAL.index("cardiomegaly")] = True
    rows = torch.tensor([1, 1])  # the same image (a normal report's) for both plans

    @torch.no_grad()
    def step(tokens: np.ndarray, r: np.ndarray) -> np.ndarray:
        out = model.decode(torch.from_numpy(tokens), **{k: m[rows[r]] for k, m in memory.items()})
        return torch.log_softmax(out[:, -1], -1).numpy()

    ids = search.greedy(step, 2, 6, plan.prefix(present, ABNORMAL, v.index))
    assert [v.decode(i) for i in ids] == ["heart enlarged .", "clear ."]


def test_training_text_puts_the_plans_findings_first() -> None:
    text = ("the heart is normal in size . there is a small left pleural effusion . mild cardiomegaly . "
            "no pneumothorax .")
    assert train.findings_first(text) == ("mild cardiomegaly . there is a small left pleural effusion . "
                                          "the heart is normal in size . no pneumothorax .")
    assert train.findings_first("the lungs are clear . no effusion .") == "the lungs are clear . no effusion ."

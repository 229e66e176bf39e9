"""The explicit Llama used for training and export: KV cache, LoRA merge, and a few training steps."""

from __future__ import annotations

import numpy as np
import torch

from services.dialogue import core, lm

TINY = lm.LlamaConfig(vocab_size=64, hidden=32, intermediate=48, layers=2, heads=4, kv_heads=2)


def _model() -> lm.SmolLM:
    torch.manual_seed(0)
    model = lm.SmolLM(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


def test_cached_steps_equal_the_full_forward() -> None:
    model = _model()
    ids = torch.randint(0, 64, (1, 9))
    pk, pv = model.empty_past()
    full, k, v = model(ids, pk, pv)
    assert k.shape == (1, 2, 2, 9, 8)
    _, k5, v5 = model(ids[:, :5], pk, pv)
    step, k9, _ = model(ids[:, 5:], k5, v5)
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k9, k, atol=1e-5, rtol=1e-5)


def test_lora_trains_and_merges_to_the_same_function() -> None:
    model = _model()
    params = lm.add_lora(model, last_layers=1, rank=4)
    assert all(p.requires_grad for p in params) and not model.embed_tokens.weight.requires_grad
    ids = torch.randint(0, 64, (2, 12))
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[:, 6:] = True
    opt = torch.optim.AdamW(params, lr=5e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model.loss(ids, mask)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    pk, pv = model.empty_past()
    before = model(ids[:1], pk, pv)[0]
    state, meta = lm.lora_state(model), {"last_layers": 1, "rank": 4, "alpha": 32.0}
    after = lm.merge_lora(model)(ids[:1], pk, pv)[0]
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    reloaded = lm.merge_lora(lm.load_lora(_model(), state, meta))
    torch.testing.assert_close(reloaded(ids[:1], pk, pv)[0], before, atol=1e-4, rtol=1e-4)


def test_greedy_stops_at_the_end_token() -> None:
    model = _model()
    out = lm.greedy(model, [1, 2, 3], end_id=-1, max_new_tokens=5)
    assert len(out) == 5
    first = out[0]
    assert lm.greedy(model, [1, 2, 3], end_id=first, max_new_tokens=5) == []


def test_retrieval_targets_the_instruction_field() -> None:
    kb = {"conditions": [
        {"id": "a", "name": "alpha itis", "symptoms": ["red skin", "itchy skin", "dry skin"], "clinic": "skin clinic",
         "examinations": ["a skin test"], "medications": ["cream"], "diet_recommended": ["fish"],
         "diet_avoid": ["alcohol"], "precautions": ["rest"], "cause": "a fungus"},
        {"id": "b", "name": "beta itis", "symptoms": ["ear pain", "fever", "muffled hearing"], "clinic": "ENT clinic",
         "examinations": ["otoscopy"], "medications": ["drops"], "diet_recommended": ["soup"],
         "diet_avoid": ["cold drinks"], "precautions": ["keep dry"], "cause": "bacteria"}]}
    cond = np.eye(2, 4, dtype=np.float32)
    patient = np.array([0.1, 0.9, 0, 0], np.float32)
    history = [{"role": "patient", "text": "I have ear pain and fever"}]
    found = core.retrieve(kb, cond, patient, history, "recommend_medicine")
    assert found["condition"] == "b" and found["slots"] == {"medications": ["drops"]}
    asked = core.retrieve(kb, cond, patient, history, "ask_symptom")
    assert asked["slots"] == {"symptoms": ["muffled hearing"]}
    facts = np.eye(16, 4, dtype=np.float32)
    plain = core.retrieve(kb, cond, patient, history, None, facts)
    assert plain["slots"] == {} and len(plain["knowledge"]) == 3


def test_batched_greedy_equals_one_prompt_at_a_time() -> None:
    model = _model()
    torch.manual_seed(1)
    prompts = [torch.randint(1, 64, (n,)).tolist() for n in (5, 9, 2, 7)]
    for end in (-1, lm.greedy(model, prompts[1], -1, max_new_tokens=6)[2]):  # never, and mid-way for one prompt
        batched = lm.greedy_batch(model, prompts, end, max_new_tokens=6)
        assert batched == [lm.greedy(model, p, end, max_new_tokens=6) for p in prompts]
    assert len({len(b) for b in batched}) > 1  # some rows ended early and left the batch

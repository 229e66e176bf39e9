"""Knowledge base and corpus generator of the consultation dialogue."""

from __future__ import annotations

import pytest

from services.dialogue import core, corpus


@pytest.fixture(scope="module")
def kb() -> dict:
    return corpus.load_kb()


@pytest.fixture(scope="module")
def data() -> dict:
    return corpus.generate(n=300, seed=3)


def test_knowledge_base_is_complete_with_valid_icd10cm_codes(kb) -> None:
    cm = pytest.importorskip("simple_icd_10_cm")
    assert set(kb["departments"]) == {"ENT", "ophthalmology", "dermatology", "digestive"}
    assert len(kb["conditions"]) >= 48
    assert len({c["id"] for c in kb["conditions"]}) == len(kb["conditions"])
    for c in kb["conditions"]:
        assert cm.is_valid_item(c["icd10cm"]), c["icd10cm"]
        assert cm.get_description(c["icd10cm"]) == c["icd10cm_title"]
        for field in core.FACT_FIELDS:
            assert c[field], (c["id"], field)
        assert len(c["symptoms"]) >= 3


def test_splits_are_by_condition_and_generation_is_seeded(kb, data) -> None:
    splits = corpus.condition_splits(kb)
    for department in kb["departments"]:
        ids = [c["id"] for c in kb["conditions"] if c["department"] == department]
        assert sorted(splits[i] for i in ids).count("test") == 2
    train_conditions = {d["condition"] for d in data["dialogues"] if d["split"] == "train"}
    test_conditions = {d["condition"] for d in data["dialogues"] if d["split"] == "test"}
    assert test_conditions and not train_conditions & test_conditions
    assert corpus.generate(n=20, seed=3)["dialogues"] == data["dialogues"][:20]


def test_every_doctor_turn_carries_its_instruction_and_knowledge(kb, data) -> None:
    by_id = {c["id"]: c for c in kb["conditions"]}
    types_seen, actions_seen = set(), set()
    for d in data["dialogues"]:
        assert d["turns"][0]["role"] == "patient"
        assert [t["role"] for t in d["turns"]][::2] == ["patient"] * ((len(d["turns"]) + 1) // 2)
        for t in d["turns"]:
            if t["role"] != "doctor":
                continue
            dtype, field = core.ACTIONS[t["action"]]
            assert t["type"] == dtype and t["field"] == field
            types_seen.add(dtype)
            actions_seen.add(t["action"])
            if field not in (None, "symptoms", "condition"):
                value = by_id[d["condition"]][field]
                assert t["slots"][core.FIELD_LABELS[field]] == (value if isinstance(value, list) else [value])
            if field:
                assert t["knowledge"] and by_id[d["condition"]]["name"] in t["knowledge"][0]
    assert types_seen == set(core.TYPES)
    assert actions_seen == set(core.ACTION_NAMES)


def test_examples_hold_the_history_before_each_doctor_turn(data) -> None:
    examples = corpus.examples(data, "train")
    assert examples and all(e["history"] and e["history"][-1]["role"] == "patient" for e in examples)
    prompt = core.build_prompt(examples[0]["history"], "type=qa; action=answer_avoid; target=food to avoid", ["x"])
    assert "Instruction:" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert "Instruction:" not in core.build_prompt(examples[0]["history"], None, ["x"])

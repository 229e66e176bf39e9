"""Export specs of the consultation dialogue (see export/registry.py and docs/dialogue.md).

``dialogue_encoder``   ONNX: MiniLM + mean pooling + instruction head (committed head).
``dialogue_generator`` ONNX: SmolLM2-135M with the committed LoRA merged, one cached decoding step.
``dialogue_generate``  python backend: instruction, retrieval and the greedy decode loop over the two
                       (BLS), streaming token pieces (decoupled).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from export.spec import BatchingSpec, ExportSpec, PythonModelSpec, TensorSpec

HERE = Path(__file__).parent
EVALUATION = HERE / "checkpoints" / "evaluation.json"
EXAMPLE_HISTORY = [
    {"role": "patient", "text": "I have had a blocked nose and facial pain around the cheeks for three days."},
    {"role": "doctor", "text": "Do you also have thick nasal discharge?"},
    {"role": "patient", "text": "Yes, I do. What could this be?"},
]


def _metrics(section: str) -> dict:
    if not EVALUATION.exists():
        return {}
    return json.loads(EVALUATION.read_text()).get(section, {})


def _training(kind: str) -> dict[str, str]:
    return {
        "command": {"encoder": "python -m services.dialogue.train_instruction",
                    "generator": "python -m services.dialogue.train_generator --iterations 23"}[kind],
        "data": "services/dialogue/data/knowledge_base.json + python -m services.dialogue.corpus (seed 0); "
                "train conditions only, validation/test conditions held out",
    }


def _encoder() -> ExportSpec:
    import torch

    from services.dialogue import core, encoder
    from services.dialogue.train_instruction import HEAD, load_head

    texts = [core.history_text(EXAMPLE_HISTORY), core.patient_text(EXAMPLE_HISTORY)]
    ids, mask = encoder.tokenize(texts)

    def build() -> torch.nn.Module:
        return encoder.InstructionEncoder(load_head()).eval()

    return ExportSpec(
        name="dialogue_encoder",
        description="all-MiniLM-L6-v2 (mean pooled, frozen) + instruction head: dialogue history -> 384-d "
        "embedding, dialogue-type and action logits; see docs/dialogue.md",
        build_model=build,
        example_inputs=lambda: {"input_ids": ids.numpy(), "attention_mask": mask.numpy()},
        inputs=(TensorSpec("input_ids", "int64", (-1,)), TensorSpec("attention_mask", "int64", (-1,))),
        outputs=(TensorSpec("embedding", "float32", (384,)), TensorSpec("type_logits", "float32", (len(core.TYPES),)),
                 TensorSpec("action_logits", "float32", (len(core.ACTION_NAMES),))),
        checkpoint=HEAD,
        training=_training("encoder"),
        preprocessing=lambda: {"tokenizer": "all-MiniLM-L6-v2 WordPiece, truncation 128",
                               "types": list(core.TYPES), "actions": list(core.ACTION_NAMES)},
        validation_metrics=lambda: _metrics("instruction"),
        parity_atol=1e-4,
        batching=BatchingSpec(max_batch_size=8),
    )


def _generator() -> ExportSpec:
    import torch

    from services.dialogue import core, lm
    from services.dialogue.train_generator import ADAPTERS

    def build() -> torch.nn.Module:
        return lm.merged_generator(ADAPTERS[True])

    def example() -> dict[str, np.ndarray]:
        model = lm.base_model()
        tok = lm.tokenizer()
        ids = tok.encode(core.build_prompt(EXAMPLE_HISTORY, None, [])).ids
        pk, pv = model.empty_past()
        with torch.no_grad():
            _, pk, pv = model(torch.tensor([ids[:-2]]), pk, pv)
        return {"input_ids": np.array([ids[-2:]], np.int64), "past_key": pk.numpy(), "past_value": pv.numpy()}

    cfg = lm.LlamaConfig()
    cache = (cfg.layers, cfg.kv_heads, -1, cfg.head_dim)
    return ExportSpec(
        name="dialogue_generator",
        description="SmolLM2-135M-Instruct with the consultation LoRA merged: one cached decoding step "
        "(input ids + past keys/values -> last-position logits + present keys/values)",
        build_model=build,
        example_inputs=example,
        inputs=(TensorSpec("input_ids", "int64", (-1,)), TensorSpec("past_key", "float32", cache),
                TensorSpec("past_value", "float32", cache)),
        outputs=(TensorSpec("logits", "float32", (cfg.vocab_size,)),
                 TensorSpec("present_key", "float32", cache), TensorSpec("present_value", "float32", cache)),
        checkpoint=ADAPTERS[True],
        training=_training("generator"),
        preprocessing=lambda: {"tokenizer": "SmolLM2 BPE (from the GGUF)", "prompt": "core.build_prompt"},
        validation_metrics=lambda: _metrics("generation"),
        parity_atol=2e-3,
        parity_rtol=1e-3,
        batching=BatchingSpec(max_batch_size=1),
    )


def _files() -> dict[str, Path]:
    """core.py, the knowledge base, its embeddings and both tokenizers, written under .cache/dialogue."""
    from services.dialogue import core, encoder, lm

    out = lm.cache_dir() / "serving"
    out.mkdir(parents=True, exist_ok=True)
    kb_path = HERE / "data" / "knowledge_base.json"
    kb = core.load_kb(str(kb_path))
    np.savez(out / "kb_embeddings.npz",
             conditions=encoder.encode([core.condition_profile(c) for c in kb["conditions"]]).numpy(),
             facts=encoder.encode([f["text"] for f in core.facts(kb)]).numpy())
    return {"core.py": HERE / "core.py", "knowledge_base.json": kb_path, "kb_embeddings.npz": out / "kb_embeddings.npz",
            "generator_tokenizer.json": lm.tokenizer_path(),
            "encoder_tokenizer.json": encoder.model_dir() / "tokenizer.json"}


def _generate() -> PythonModelSpec:
    return PythonModelSpec(
        name="dialogue_generate",
        description="InsMed-style consultation turn: instruction (dialogue_encoder), knowledge retrieval, greedy "
        "decoding over dialogue_generator with a KV cache; streams token pieces",
        model_file=HERE / "triton_model.py",
        inputs=(TensorSpec("request", "bytes", (1,)),),
        outputs=(TensorSpec("text", "bytes", (1,)), TensorSpec("meta", "bytes", (1,))),
        composes=("dialogue_encoder", "dialogue_generator"),
        files=_files,
        parameters={"layers": "30"},
        decoupled=True,
        training={"command": "see dialogue_encoder and dialogue_generator"},
        preprocessing=lambda: {"request": "JSON {messages, max_new_tokens, instructions}", "decoding": "greedy"},
        validation_metrics=lambda: _metrics("generation"),
    )


SPECS = {"dialogue_encoder": _encoder, "dialogue_generator": _generator, "dialogue_generate": _generate}

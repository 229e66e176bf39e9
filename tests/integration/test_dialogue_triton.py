"""The dialogue models straight through Triton: the encoder and the cached generator step match ONNX Runtime on
the exported files, and ``dialogue_generate`` streams meta, token pieces and a final response."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer

from export.manifest import latest_manifest
from services.dialogue import core

pytestmark = pytest.mark.integration


def _version_dir(repo: Path, name: str) -> Path:
    manifest = latest_manifest(repo / name)
    assert manifest is not None, f"{name} is not exported (medstack export {name})"
    return repo / name / str(manifest["version"])


def _infer(client: grpcclient.InferenceServerClient, model: str, feeds: dict[str, np.ndarray],
           outputs: list[str]) -> list[np.ndarray]:
    tensors = []
    for name, array in feeds.items():
        t = grpcclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        t.set_data_from_numpy(array)
        tensors.append(t)
    result = client.infer(model, tensors)
    return [result.as_numpy(name) for name in outputs]


def test_encoder_and_generator_match_onnx_runtime(triton, model_repository: Path) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    generate_dir = _version_dir(model_repository, "dialogue_generate")
    enc_tok = Tokenizer.from_file(str(generate_dir / "encoder_tokenizer.json"))
    ids = np.array([enc_tok.encode("Patient: my eyes are itchy and watery").ids], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    names = ["embedding", "type_logits", "action_logits"]
    served = _infer(client, "dialogue_encoder", feeds, names)
    local = ort.InferenceSession(str(_version_dir(model_repository, "dialogue_encoder") / "model.onnx")).run(names,
                                                                                                            feeds)
    for got, want in zip(served, local, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert served[1].shape == (1, len(core.TYPES)) and served[2].shape == (1, len(core.ACTION_NAMES))

    gen_tok = Tokenizer.from_file(str(generate_dir / "generator_tokenizer.json"))
    prompt = np.array([gen_tok.encode(core.build_prompt([{"role": "patient", "text": "I have heartburn"}], None,
                                                        [])).ids], np.int64)
    past = np.zeros((1, 30, 3, 0, 64), np.float32)
    feeds = {"input_ids": prompt, "past_key": past, "past_value": past}
    names = ["logits", "present_key", "present_value"]
    served = _infer(client, "dialogue_generator", feeds, names)
    assert served[1].shape == (1, 30, 3, prompt.shape[1], 64)
    np.testing.assert_allclose(served[0], ort.InferenceSession(
        str(_version_dir(model_repository, "dialogue_generator") / "model.onnx")).run(["logits"], feeds)[0],
        atol=1e-3, rtol=1e-4)


def test_generate_streams_meta_tokens_and_a_final_response(triton) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    body = {"messages": [{"role": "user", "content": "I have itchy skin between the toes and peeling skin."}],
            "max_new_tokens": 12}
    tensor = grpcclient.InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([json.dumps(body).encode()], dtype=np.object_))
    client.async_stream_infer("dialogue_generate", [tensor])
    metas, pieces = [], []
    while True:
        result, error = responses.get(timeout=120)
        assert error is None, error
        raw = result.as_numpy("meta")[0]
        pieces.append(result.as_numpy("text")[0].decode())
        if raw:
            metas.append(json.loads(raw))
            if metas[-1].get("done"):
                break
    client.stop_stream()
    assert metas[0]["action"] in core.ACTION_NAMES and metas[0]["type"] in core.TYPES
    assert 1 <= metas[-1]["tokens"] <= 12 and "".join(pieces).strip()

    bad = grpcclient.InferInput("request", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"not json"], dtype=np.object_))
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer("dialogue_generate", [bad])
    _, error = responses.get(timeout=60)
    client.stop_stream()
    assert error is not None and "dialogue failed" in str(error)

"""Triton python-backend model ``dialogue_generate``: instruction, retrieval and the decode loop.

Input ``request`` (TYPE_STRING, [1]): JSON ``{"messages": [{"role": "user"|"assistant", "content": ...}],
"max_new_tokens": 64, "instructions": true}``. Decoupled: the first response carries ``meta`` (the
predicted instruction, slots, knowledge), then one response per generated token piece in ``text``,
then a last response with ``meta`` ``{"done": true, ...}`` and the final flag.

Per step it calls two served models through BLS: ``dialogue_encoder`` once (MiniLM + instruction head
on the history) and ``dialogue_generator`` once per token (SmolLM2 + merged LoRA, KV cache in/out).
Files next to this one: ``core.py`` (shared logic), ``knowledge_base.json``, ``kb_embeddings.npz``,
``generator_tokenizer.json``, ``encoder_tokenizer.json``.
"""

import json
import os
import sys

for _path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

ENCODER, GENERATOR = "dialogue_encoder", "dialogue_generator"
MAX_NEW_TOKENS = 96
ENCODER_TOKENS = 128


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        sys.path.insert(0, version_dir)
        import core  # noqa: PLC0415 - shipped next to this file

        self.core = core
        self.kb = core.load_kb(os.path.join(version_dir, "knowledge_base.json"))
        emb = np.load(os.path.join(version_dir, "kb_embeddings.npz"))
        self.cond_emb, self.fact_emb = emb["conditions"], emb["facts"]
        self.gen_tok = Tokenizer.from_file(os.path.join(version_dir, "generator_tokenizer.json"))
        self.enc_tok = Tokenizer.from_file(os.path.join(version_dir, "encoder_tokenizer.json"))
        self.enc_tok.enable_truncation(ENCODER_TOKENS)
        self.enc_tok.no_padding()
        self.end_id = self.gen_tok.token_to_id("<|im_end|>")
        config = json.loads(args["model_config"])
        self.layers = int(config.get("parameters", {}).get("layers", {}).get("string_value", "30"))

    # ---- BLS calls -------------------------------------------------------------------------------------
    def _infer(self, model, inputs, outputs):
        request = pb_utils.InferenceRequest(
            model_name=model, requested_output_names=outputs,
            inputs=[pb_utils.Tensor(k, v) for k, v in inputs.items()])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]

    def count_tokens(self, text):
        return len(self.gen_tok.encode(text).ids)

    def _embed(self, text):
        ids = np.array([self.enc_tok.encode(text).ids], dtype=np.int64)
        emb, type_logits, action_logits = self._infer(
            ENCODER, {"input_ids": ids, "attention_mask": np.ones_like(ids)},
            ["embedding", "type_logits", "action_logits"])
        return emb[0], type_logits[0], action_logits[0]

    # ---- one consultation turn -----------------------------------------------------------------------
    def plan(self, history, instructions):
        core = self.core
        _, type_logits, action_logits = self._embed(core.history_text(history))
        patient_emb, _, _ = self._embed(core.patient_text(history) or " ")
        action = core.ACTION_NAMES[int(np.argmax(action_logits))]
        dtype = core.TYPES[int(np.argmax(type_logits))]
        if instructions:
            found = core.retrieve(self.kb, self.cond_emb, patient_emb, history, action)
            instruction = core.instruction_text(dtype, action, core.ACTIONS[action][1])
        else:
            found = core.retrieve(self.kb, self.cond_emb, patient_emb, history, None, self.fact_emb)
            instruction = None
        budget = {}  # the prompt keeps to core.PROMPT_TOKEN_BUDGET generator tokens (long messages trimmed)
        prompt = core.build_prompt(history, instruction, found["knowledge"], self.count_tokens, report=budget)
        meta = {"type": dtype, "action": action, "slots": found["slots"], "knowledge": found["knowledge"],
                "condition": found["condition"], "instruction": instruction, "prompt": budget}
        return prompt, meta

    def generate(self, prompt, max_new_tokens, out):
        """Greedy decoding into ``out`` (token ids); yields the text each new token adds (UTF-8 safe)."""
        ids = np.array([self.gen_tok.encode(prompt).ids], dtype=np.int64)
        past_k = np.zeros((1, self.layers, 3, 0, 64), np.float32)
        past_v = np.zeros_like(past_k)
        shown = ""
        for _ in range(max_new_tokens):
            logits, past_k, past_v = self._infer(
                GENERATOR, {"input_ids": ids, "past_key": past_k, "past_value": past_v},
                ["logits", "present_key", "present_value"])
            nxt = int(np.argmax(logits[0]))
            if nxt == self.end_id:
                break
            out.append(nxt)
            text = self.gen_tok.decode(out)
            if not text.endswith("\ufffd") and len(text) > len(shown):
                yield text[len(shown):]
                shown = text
            ids = np.array([[nxt]], dtype=np.int64)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                raw = pb_utils.get_input_tensor_by_name(request, "request").as_numpy().reshape(-1)[0]
                body = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
                messages = body["messages"]
                if not messages or not all(m.get("role") in ("user", "assistant") for m in messages):
                    raise ValueError("messages must be a non-empty list of user/assistant messages")
                history = [{"role": m["role"], "text": str(m["content"])} for m in messages]
                max_new = max(1, min(int(body.get("max_new_tokens", MAX_NEW_TOKENS)), 256))
                prompt, meta = self.plan(history, bool(body.get("instructions", True)))
                sender.send(self._response("", meta))
                counted = []
                for piece in self.generate(prompt, max_new, counted):
                    sender.send(self._response(piece, None))
                sender.send(self._response("", {"done": True, "tokens": len(counted)}),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as error:  # noqa: BLE001 - one bad request must not stop the model
                sender.send(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"dialogue failed: {error}")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    @staticmethod
    def _response(text, meta):
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("meta", np.array([json.dumps(meta).encode("utf-8") if meta else b""], dtype=np.object_)),
        ])

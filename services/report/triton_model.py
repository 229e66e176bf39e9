"""Triton python-backend model ``report_generate``: one request = one radiograph → report text + findings.

Runs ``report_encoder`` once and then ``report_decoder`` once per generated token through BLS
(``pb_utils.InferenceRequest``), greedy when ``beam_size`` is 1 and beam search otherwise, after the finding
plan (``plan.py``: the encoder's finding probabilities at the thresholds calibrated on validation). The search and
plan code (``search.py``, ``plan.py``), the vocabulary (``vocab.json``, ending with the plan words) and the
thresholds (``thresholds.json``) are shipped beside this file by the export.
"""

import json
import os
import sys

# The stub embeds the system libpython and ignores PYTHONPATH when it builds sys.path; add it here
# (numpy < 2 lives in the Triton environment), and this version folder for search.py.
for _path in reversed(os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    if _path and _path not in sys.path:
        sys.path.insert(0, _path)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import plan  # noqa: E402
import search  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

ENCODER, DECODER = "report_encoder", "report_decoder"
KNOWLEDGE = ("memory1", "memory2", "memory3", "context", "context_pad", "clinical")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.max_tokens = int(params.get("max_tokens", "60"))
        self.max_beam = int(params.get("max_beam", "5"))
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "vocab.json")) as handle:
            self.words = json.load(handle)["words"]
        with open(os.path.join(version_dir, "thresholds.json")) as handle:
            self.thresholds = json.load(handle)["findings"]
        self.findings = params["findings"].split(",")  # the order of finding_probs
        self.index = {word: i for i, word in enumerate(self.words)}
        self.planned = [w[2:-1] for w in self.words if w.startswith("<+") and w.endswith(">")]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except ValueError as error:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG)))
            except RuntimeError as error:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(str(error), pb_utils.TritonError.INTERNAL)))
        return responses

    def _one(self, request):
        image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().astype(np.float32)
        if image.shape != (1, 1, 128, 128):
            raise ValueError(f"image must be (1, 1, 128, 128), got {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError("image holds non-finite values")
        beam_size = int(pb_utils.get_input_tensor_by_name(request, "beam_size").as_numpy().reshape(-1)[0])
        if not 1 <= beam_size <= self.max_beam:
            raise ValueError(f"beam_size must be 1..{self.max_beam}, got {beam_size}")
        enc = self._infer(ENCODER, {"image": image}, [*KNOWLEDGE, "finding_probs"])
        memory = {name: enc[name] for name in KNOWLEDGE}
        calls = plan.head_calls(enc["finding_probs"], self.findings, self.thresholds, self.planned)
        prefix = plan.prefix(calls, self.planned, self.index)

        def step(tokens, rows):
            feeds = {"tokens": tokens.astype(np.int64)}
            feeds.update({name: np.ascontiguousarray(value[rows]) for name, value in memory.items()})
            return self._infer(DECODER, feeds, ["log_probs"])["log_probs"]

        if beam_size == 1:
            ids = search.greedy(step, 1, self.max_tokens, prefix)[0]
        else:
            ids = search.beam(step, 0, beam_size, self.max_tokens, prefix=list(prefix[0]))
        text = " ".join(self.words[i] if 0 <= i < len(self.words) else "<unk>" for i in ids)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("text", np.array([text.encode("utf-8")], dtype=np.object_)),
            pb_utils.Tensor("finding_probs", enc["finding_probs"].reshape(-1).astype(np.float32)),
        ])

    def _infer(self, model, feeds, outputs):
        inputs = [pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in feeds.items()]
        response = pb_utils.InferenceRequest(model_name=model, requested_output_names=outputs,
                                             inputs=inputs).exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}

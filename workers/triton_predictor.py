"""Triton as a sliding-window predictor: a batch of patches in, logits out, over gRPC."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from export.manifest import MANIFEST


class ModelNotServed(RuntimeError):
    """Triton answers but does not (yet) serve the model: transient while models load."""


@dataclass
class TritonPredictor:
    model: str
    url: str
    input_name: str = "image"
    output_name: str = "logits"
    timeout_s: float = 300.0
    _client: grpcclient.InferenceServerClient = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._client = grpcclient.InferenceServerClient(self.url)

    def served_version(self) -> str:
        """The version Triton serves now (the highest READY one)."""
        index = self._client.get_model_repository_index(as_json=True).get("models", [])
        ready = [int(m["version"]) for m in index if m["name"] == self.model and m.get("state") == "READY"]
        if not ready:
            raise ModelNotServed(f"model {self.model} is not loaded in Triton at {self.url}")
        return str(max(ready))

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput(self.input_name, list(patches.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
        output = grpcclient.InferRequestedOutput(self.output_name)
        result = self._client.infer(self.model, [tensor], outputs=[output], client_timeout=self.timeout_s)
        logits = result.as_numpy(self.output_name)
        if logits is None or logits.size == 0:
            # the python-backend stub answers empty tensors when its numpy is too new
            raise ModelNotServed(f"Triton returned an empty {self.output_name!r} from {self.model}")
        return logits

    def close(self) -> None:
        self._client.close()


def manifest_path(repository: Any, model: str, version: str) -> Any:
    return repository / model / version / MANIFEST

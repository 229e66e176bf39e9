"""A served model with several named inputs and outputs, called over plain gRPC.

For models whose tensors are small (MedLAM crops and features, box-prompted slices); the sliding-
window segmenters with volume-sized logits use TritonPredictor and shared memory instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype

from core.settings import settings
from export.manifest import read_manifest
from workers.triton_predictor import ModelNotServed, served_version


class TritonModel:
    def __init__(self, name: str, url: str | None = None, timeout_s: float = 300.0) -> None:
        self.name, self.url, self.timeout_s = name, url or settings.triton_grpc_url, timeout_s
        self._client = grpcclient.InferenceServerClient(self.url)
        self.version = served_version(self._client, name, self.url)
        self._outputs = [o["name"] for o in self._client.get_model_metadata(name, as_json=True)["outputs"]]

    def manifest(self) -> dict[str, Any]:
        return read_manifest(settings.model_repository / self.name / self.version)

    def facts(self) -> dict[str, str]:
        """Name, version and sha256 of the served model, as results quote them."""
        return {"name": self.name, "version": self.version, "sha256": self.manifest()["sha256"]}

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = self._client.infer(self.name, tensors, outputs=[grpcclient.InferRequestedOutput(n)
                                                                 for n in self._outputs],
                                    client_timeout=self.timeout_s)
        out = {n: result.as_numpy(n) for n in self._outputs}
        if any(v is None or v.size == 0 for v in out.values()):
            raise ModelNotServed(f"Triton returned an empty output from {self.name}")
        return out

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> TritonModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Triton as a sliding-window predictor: a batch of patches in, logits out, over gRPC.

Moving logits costs more than computing them (a batch of two 64×128×128 patches with 12 classes
is ~100 MB), so when the worker and Triton share a host the tensors travel through Triton's
system shared memory instead of the gRPC message; elsewhere it falls back to plain gRPC.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class ModelNotServed(RuntimeError):
    """Triton answers but does not (yet) serve the model: transient while models load."""


def served_version(client: grpcclient.InferenceServerClient, model: str, url: str) -> str:
    """The version of ``model`` Triton serves now (the highest READY one)."""
    index = client.get_model_repository_index(as_json=True).get("models", [])
    ready = [int(m["version"]) for m in index if m["name"] == model and m.get("state") == "READY"]
    if not ready:
        raise ModelNotServed(f"model {model} is not loaded in Triton at {url}")
    return str(max(ready))


@dataclass
class _Region:
    """One registered system shared-memory region."""

    name: str
    handle: object
    byte_size: int


@dataclass
class TritonPredictor:
    model: str
    url: str
    input_name: str = "image"
    output_name: str = "logits"
    timeout_s: float = 300.0
    shared_memory: bool | None = None  # None: on when Triton is on this host
    _client: grpcclient.InferenceServerClient = field(init=False, repr=False)
    _regions: dict[str, _Region] = field(init=False, default_factory=dict, repr=False)
    _classes: int | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._client = grpcclient.InferenceServerClient(self.url)
        if self.shared_memory is None:
            self.shared_memory = self.url.rsplit(":", 1)[0] in LOCAL_HOSTS

    def served_version(self) -> str:
        return served_version(self._client, self.model, self.url)

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        patches = np.ascontiguousarray(patches, dtype=np.float32)
        if self.shared_memory:
            try:
                return self._infer_shared(patches)
            except (InferenceServerException, shm.SharedMemoryException) as error:
                log.warning("shared memory with Triton unavailable (%s); using plain gRPC", error)
                self._release()
                self.shared_memory = False
        return self._infer_grpc(patches)

    def _infer_grpc(self, patches: np.ndarray) -> np.ndarray:
        tensor = grpcclient.InferInput(self.input_name, list(patches.shape), "FP32")
        tensor.set_data_from_numpy(patches)
        output = grpcclient.InferRequestedOutput(self.output_name)
        result = self._client.infer(self.model, [tensor], outputs=[output], client_timeout=self.timeout_s)
        return self._checked(result.as_numpy(self.output_name))

    def _infer_shared(self, patches: np.ndarray) -> np.ndarray:
        out_shape = self._output_shape(patches.shape)
        out_bytes = int(np.prod(out_shape)) * 4
        region_in = self._region("input", patches.nbytes)
        region_out = self._region("output", out_bytes)
        shm.set_shared_memory_region(region_in.handle, [patches])
        tensor = grpcclient.InferInput(self.input_name, list(patches.shape), "FP32")
        tensor.set_shared_memory(region_in.name, patches.nbytes)
        output = grpcclient.InferRequestedOutput(self.output_name)
        output.set_shared_memory(region_out.name, out_bytes)
        self._client.infer(self.model, [tensor], outputs=[output], client_timeout=self.timeout_s)
        # copy out: the region is reused by the next call
        return self._checked(shm.get_contents_as_numpy(region_out.handle, np.float32, out_shape).copy())

    def _output_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Logits shape for a patch batch: batch and spatial dims of the input, classes from the model."""
        if self._classes is None:
            meta = self._client.get_model_metadata(self.model, as_json=True)
            dims = next(o["shape"] for o in meta["outputs"] if o["name"] == self.output_name)
            self._classes = int(dims[1])
        classes = self._classes
        if classes < 1:
            raise shm.SharedMemoryException(f"{self.model} has a dynamic class axis; cannot size the region")
        return (in_shape[0], classes, *in_shape[2:])

    def _region(self, role: str, byte_size: int) -> _Region:
        region = self._regions.get(role)
        if region is not None and region.byte_size >= byte_size:
            return region
        if region is not None:
            self._drop(role)
        name = f"medstack-{role}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        handle = shm.create_shared_memory_region(name, "/" + name, byte_size)
        try:
            self._client.register_system_shared_memory(name, "/" + name, byte_size)
        except InferenceServerException:
            shm.destroy_shared_memory_region(handle)
            raise
        self._regions[role] = _Region(name, handle, byte_size)
        return self._regions[role]

    def _drop(self, role: str) -> None:
        region = self._regions.pop(role)
        try:
            self._client.unregister_system_shared_memory(region.name)
        except InferenceServerException as error:
            log.warning("could not unregister %s: %s", region.name, error)
        shm.destroy_shared_memory_region(region.handle)

    def _release(self) -> None:
        for role in list(self._regions):
            self._drop(role)

    def _checked(self, logits: np.ndarray | None) -> np.ndarray:
        if logits is None or logits.size == 0:
            # the python-backend stub answers empty tensors when its numpy is too new
            raise ModelNotServed(f"Triton returned an empty {self.output_name!r} from {self.model}")
        return logits

    def close(self) -> None:
        self._release()
        self._client.close()

"""One asyncio gRPC client to Triton per gateway process.

The channel is opened once at start-up and reused by every request (HTTP/2 multiplexes them).
Calls carry a timeout; ``UNAVAILABLE`` (Triton restarting, connection refused) is retried with
exponential backoff; when retries run out the caller gets ``TritonUnavailable``, which routes turn
into 503 + ``Retry-After`` while the gateway itself stays up. The channel reconnects on its own
once Triton is back (reconnect backoff capped at 2 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.observability import TRITON_LATENCY

log = logging.getLogger(__name__)

MAX_MESSAGE = 2**31 - 1
_RETRYABLE = ("StatusCode.UNAVAILABLE",)


class TritonUnavailable(RuntimeError):
    """Triton did not answer (down, restarting, or unreachable) after the retries."""


class TritonTimeout(RuntimeError):
    """Triton accepted the call but did not answer in time."""


class TritonRejected(ValueError):
    """Triton refused the request itself (wrong tensor name, shape or type)."""


@dataclass(frozen=True)
class InferenceResult:
    model: str
    version: str
    outputs: dict[str, np.ndarray]


class TritonClient:
    def __init__(self, url: str, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 0.1) -> None:
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s
        self._client: grpcaio.InferenceServerClient | None = None

    @property
    def client(self) -> grpcaio.InferenceServerClient:
        if self._client is None:
            # created lazily so the channel binds to the running event loop
            self._client = grpcaio.InferenceServerClient(self.url, channel_args=[
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2_000),
            ])
        return self._client

    async def _call(self, what: str, model: str, fn: Any, timeout_s: float) -> Any:
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                result = await fn(timeout_s)
            except InferenceServerException as error:
                status = str(error.status())
                TRITON_LATENCY.labels(model, status.removeprefix("StatusCode.").lower()).observe(
                    time.perf_counter() - started)
                if status in _RETRYABLE and attempt < self.retries:
                    await asyncio.sleep(self.backoff_s * 2**attempt)
                    attempt += 1
                    continue
                if status in _RETRYABLE:
                    raise TritonUnavailable(f"Triton at {self.url} is unavailable ({what})") from error
                if status == "StatusCode.DEADLINE_EXCEEDED":
                    raise TritonTimeout(f"Triton did not answer {what} within {timeout_s:g} s") from error
                if status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND", "None"):
                    raise TritonRejected(error.message() or str(error)) from error
                raise TritonUnavailable(f"Triton failed {what}: {status}") from error
            TRITON_LATENCY.labels(model, "ok").observe(time.perf_counter() - started)
            return result

    async def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return bool(await self.client.is_server_ready(client_timeout=timeout_s))
        except InferenceServerException:
            return False

    async def model_states(self, timeout_s: float = 2.0) -> dict[str, dict[str, str]]:
        """``{model: {version: state}}`` from Triton's repository index."""
        index = await self._call(
            "repository index", "-",
            lambda t: self.client.get_model_repository_index(as_json=True, client_timeout=t), timeout_s,
        )
        states: dict[str, dict[str, str]] = {}
        for entry in index.get("models", []):
            if "version" in entry:
                states.setdefault(entry["name"], {})[entry["version"]] = entry.get("state", "UNKNOWN")
        return states

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                    request_id: str = "") -> InferenceResult:
        tensors = []
        for name, array in inputs.items():
            tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        requested = [InferRequestedOutput(n) for n in outputs] if outputs else None
        response = await self._call(
            "inference", model,
            lambda t: self.client.infer(model, tensors, outputs=requested, request_id=request_id[:64],
                                        client_timeout=t),
            self.timeout_s,
        )
        # the protobuf itself: as_json would base64 every output tensor into a JSON string first
        message = response.get_response()
        arrays = {o.name: response.as_numpy(o.name) for o in message.outputs}
        return InferenceResult(model, str(message.model_version), arrays)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

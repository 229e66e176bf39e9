"""One asyncio gRPC client to Triton per gateway process.

The channel is opened once at start-up and reused by every request (HTTP/2 multiplexes them).
Calls carry a timeout; ``UNAVAILABLE`` (Triton restarting, connection refused) is retried with
exponential backoff; when retries run out the caller gets ``TritonUnavailable``, which routes turn
into 503 + ``Retry-After`` while the gateway itself stays up. The channel reconnects on its own
once Triton is back (reconnect backoff capped at 2 s). ``triton_problem`` is the one mapping from a
failed Triton call to the problem a route answers with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from core.settings import settings
from gateway.observability import TRITON_LATENCY
from gateway.problems import Problem

log = logging.getLogger(__name__)

MAX_MESSAGE = 2**31 - 1
_RETRYABLE = ("StatusCode.UNAVAILABLE",)


class TritonError(Exception):
    """A Triton call failed; one of the three kinds below."""


class TritonUnavailable(TritonError, RuntimeError):
    """Triton did not answer (down, restarting, or unreachable) after the retries."""


class TritonTimeout(TritonError, RuntimeError):
    """Triton accepted the call but did not answer in time."""


class TritonRejected(TritonError, ValueError):
    """Triton refused the request itself (wrong tensor name, shape or type)."""


_STREAM_UNAVAILABLE = ("UNAVAILABLE", "DEADLINE", "CANCELLED")


def triton_problem(error: TritonError | InferenceServerException, model: str = "") -> Problem:
    """The answer to a failed Triton call: 503 (down, ``Retry-After``), 504 (timed out), 422 (rejected); a
    stream's error (``InferenceServerException``, from ``TritonClient.stream``) is 503 either way."""
    retry_after = {"Retry-After": str(settings.retry_after_s)}
    if isinstance(error, InferenceServerException):
        if any(s in str(error.status()) for s in _STREAM_UNAVAILABLE):
            return Problem(503, "Triton unavailable", f"{model} did not answer: {error.message()}",
                           kind="triton-unavailable", headers=retry_after)
        return Problem(503, "Generation failed", f"{model}: {(error.message() or str(error)).splitlines()[0]}",
                       kind="generation-failed")
    if isinstance(error, TritonTimeout):
        return Problem(504, "Triton timed out", str(error), kind="upstream-timeout")
    if isinstance(error, TritonRejected):
        text = str(error).strip()
        return Problem(422, "Triton rejected the request", text.splitlines()[0][:300] if text else "rejected",
                       kind="inference-rejected")
    return Problem(503, "Triton unavailable", f"Triton is not answering; retry in {settings.retry_after_s} s",
                   kind="triton-unavailable", headers=retry_after)


def _tensors(inputs: dict[str, np.ndarray]) -> list[InferInput]:
    """KServe v2 input tensors; the datatype follows the array's (an object array of bytes is BYTES)."""
    tensors = []
    for name, array in inputs.items():
        tensor = InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        tensors.append(tensor)
    return tensors


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
        tensors = _tensors(inputs)
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

    async def stream(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
                     timeout_s: float) -> AsyncIterator[dict[str, np.ndarray]]:
        """The responses of a decoupled model to one request, each as ``{output: array}``; an error
        response raises ``InferenceServerException``. Close it (``contextlib.aclosing``) to cancel."""
        tensors, requested = _tensors(inputs), [InferRequestedOutput(n) for n in outputs]

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": tensors, "outputs": requested}

        responses = self.client.stream_infer(requests(), stream_timeout=timeout_s)
        try:
            async for result, error in responses:
                if error is not None:
                    raise error
                yield {name: result.as_numpy(name) for name in outputs}
        except grpc.aio.AioRpcError as error:  # the stream itself failed (Triton down): a typed error, not a 500
            raise InferenceServerException(error.details() or str(error.code()), status=str(error.code())) from error
        finally:
            responses.cancel()

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

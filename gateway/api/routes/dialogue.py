"""Consultation dialogue (InsMed): sessions and messages.

Needs the model ``dialogue_generate`` (python backend, decoupled: it streams token pieces). Sessions live
in Redis under ``medstack:dialogue:session:<id>`` with a TTL refreshed on every write and a cap on the
number of messages; a session is visible only to the key that created it (and admins).

Safety runs here, outside the model: a message with red-flag symptoms is answered with an urgent-care
instruction and the model is not asked; every answer carries the not-a-diagnosis notice; claims of
certainty are rewritten (``services.dialogue.safety``).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import redis.asyncio as aioredis
from fastapi import APIRouter, Request, status
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from core.keys import Scope
from core.settings import settings
from gateway.auth import CurrentKey, require
from gateway.capabilities import DIALOGUE, require_available
from gateway.catalog import manifests
from gateway.deps import Triton
from gateway.problems import Problem, problem_responses
from gateway.schemas import SHA
from services.dialogue.safety import NOTICE, Hedger, red_flags, urgent_reply

router = APIRouter(
    prefix="/v1/dialogue", tags=["dialogue"], dependencies=[require(Scope.DIALOGUE), require_available(DIALOGUE)],
    responses=problem_responses(401, 403, 429, 503),
)

SESSION_TTL_S = 2 * 3600  # idle sessions expire
MAX_MESSAGES = 40  # user + assistant messages per session
MAX_NEW_TOKENS = 80
STREAM_TIMEOUT_S = 180.0
MODEL = "dialogue_generate"

SessionId = Annotated[str, PathParam(max_length=64, examples=["c2f1e0d9b8a7"])]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"language": "en"}]})

    language: Literal["en"] = Field("en", description="the consultation model speaks English only")
    context: str | None = Field(None, max_length=2000, description="optional setting, e.g. 'triage'; no identifiers")


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"content": "I have had a blocked nose and pain around my cheeks for three days.", "stream": False}]})

    content: str = Field(min_length=1, max_length=4000)
    stream: bool = Field(False, description="true: answer as Server-Sent Events (`meta`, one `token` event per "
                         "token piece, then `message` with the stored answer)")


class MessagePublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "role": "assistant", "created_at": "2026-11-29T18:00:03Z",
        "content": "These symptoms may fit acute sinusitis, but a doctor needs to examine you to be sure.",
        "notice": NOTICE, "red_flags": [],
        "instruction": {"type": "diagnosis", "action": "inform_diagnosis", "slots": {"condition": ["acute sinusitis"]}},
        "model": {"name": "dialogue_generate", "version": "1", "sha256": SHA},
    }]})

    role: Literal["user", "assistant"]
    content: str
    created_at: datetime
    notice: str | None = Field(None, description="assistant messages: not a diagnosis")
    red_flags: list[str] = Field(default_factory=list)
    instruction: dict[str, Any] | None = Field(None, description="the predicted dialogue type, action and slots")
    model: dict[str, str] | None = None


class SessionPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "c2f1e0d9b8a7", "language": "en", "created_at": "2026-11-29T18:00:00Z", "messages": []}]})

    id: str
    language: str
    created_at: datetime
    messages: list[MessagePublic]


# ---- session store ---------------------------------------------------------------------------------------

_clients: dict[str, aioredis.Redis] = {}


def _redis() -> aioredis.Redis:
    url = settings.redis_url
    if url not in _clients:
        _clients[url] = aioredis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
    return _clients[url]


def _key(session_id: str) -> str:
    return f"medstack:dialogue:session:{session_id}"


def _store_down(error: Exception) -> Problem:
    return Problem(503, "Session store unavailable", f"Redis did not answer ({type(error).__name__}); retry shortly",
                   kind="service-unavailable", headers={"Retry-After": "2"})


async def _load(session_id: str, who: CurrentKey) -> dict[str, Any]:
    try:
        raw = await _redis().get(_key(session_id))
    except (RedisError, OSError) as error:
        raise _store_down(error) from error
    session = json.loads(raw) if raw else None
    if session is None or (session["owner"] != who.id and not who.is_admin):
        raise Problem(404, "Session not found", f"no dialogue session {session_id} (expired after "
                      f"{SESSION_TTL_S // 60} idle minutes, or not visible to this key)", kind="session-not-found")
    return session  # type: ignore[no-any-return]


async def _save(session: dict[str, Any]) -> None:
    try:
        await _redis().set(_key(session["id"]), json.dumps(session), ex=SESSION_TTL_S)
    except (RedisError, OSError) as error:
        raise _store_down(error) from error


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _public(session: dict[str, Any]) -> SessionPublic:
    return SessionPublic(id=session["id"], language=session["language"], created_at=session["created_at"],
                         messages=[MessagePublic(**m) for m in session["messages"]])


# ---- Triton: the decoupled model, read as a stream ---------------------------------------------------

def _model_facts() -> dict[str, str]:
    manifest = manifests().get(MODEL, {})
    return {"name": MODEL, "version": str(manifest.get("version", "")), "sha256": str(manifest.get("sha256", ""))}


async def _generate(triton: Triton, history: list[dict[str, str]]) -> AsyncIterator[tuple[str, dict | None]]:
    """(text piece, meta) pairs from ``dialogue_generate``; meta on the first and the last response."""
    payload = json.dumps({"messages": history, "max_new_tokens": MAX_NEW_TOKENS}).encode()
    tensor = InferInput("request", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([payload], dtype=np.object_))

    async def requests() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": MODEL, "inputs": [tensor],
               "outputs": [InferRequestedOutput("text"), InferRequestedOutput("meta")]}

    stream = triton.client.stream_infer(requests(), stream_timeout=STREAM_TIMEOUT_S)
    try:
        async for result, error in stream:
            if error is not None:
                raise _triton_problem(error)
            text = result.as_numpy("text")[0].decode()
            raw = result.as_numpy("meta")[0]
            meta = json.loads(raw) if raw else None
            yield text, meta
            if meta and meta.get("done"):
                return
    except InferenceServerException as error:
        raise _triton_problem(error) from error
    finally:
        stream.cancel()


def _triton_problem(error: InferenceServerException) -> Problem:
    status_text = str(error.status())
    if "UNAVAILABLE" in status_text or "DEADLINE" in status_text or "CANCELLED" in status_text:
        return Problem(503, "Triton unavailable", f"{MODEL} did not answer: {error.message()}",
                       kind="triton-unavailable", headers={"Retry-After": "5"})
    return Problem(503, "Generation failed", f"{MODEL}: {(error.message() or str(error)).splitlines()[0]}",
                   kind="generation-failed")


async def _answer(triton: Triton, session: dict[str, Any], flags: list[str]) -> AsyncIterator[tuple[str, dict]]:
    """Pieces of the assistant answer: ("meta", {...}), ("token", {"text"}), ..., ("message", stored message)."""
    history = [{"role": m["role"], "content": m["content"]} for m in session["messages"] if m["role"] == "user"
               or not m.get("red_flags")]
    instruction: dict[str, Any] | None = None
    text = ""
    if flags:
        yield "meta", {"red_flags": flags, "instruction": None}
        for piece in _words(urgent_reply(flags)):
            text += piece
            yield "token", {"text": piece}
    else:
        hedger = Hedger()
        async for piece, meta in _generate(triton, history):
            if meta is not None and not meta.get("done"):
                instruction = {k: meta[k] for k in ("type", "action", "slots", "knowledge") if k in meta}
                yield "meta", {"red_flags": [], "instruction": instruction}
            out = hedger.push(piece) if piece else ""
            if out:
                text += out
                yield "token", {"text": out}
        rest = hedger.flush()
        if rest:
            text += rest
            yield "token", {"text": rest}
    message = {"role": "assistant", "content": text.strip() or "Could you tell me a little more about it?",
               "created_at": _now(), "notice": NOTICE, "red_flags": flags, "instruction": instruction,
               "model": None if flags else _model_facts()}
    session["messages"].append(message)
    await _save(session)
    yield "message", message


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


# ---- routes ----------------------------------------------------------------------------------------------

@router.post("/sessions", status_code=status.HTTP_201_CREATED, summary="Start a consultation",
             responses=problem_responses(422))
async def create_session(body: SessionCreate, who: CurrentKey) -> SessionPublic:
    session = {"id": secrets.token_hex(8), "owner": who.id, "language": body.language, "context": body.context,
               "created_at": _now(), "messages": []}
    await _save(session)
    return _public(session)


@router.get("/sessions/{session_id}", summary="A consultation and its history", responses=problem_responses(404))
async def get_session(session_id: SessionId, who: CurrentKey) -> SessionPublic:
    return _public(await _load(session_id, who))


@router.post("/sessions/{session_id}/messages", summary="Send a message, get the reply (whole or streamed)",
             response_model=MessagePublic, responses={**problem_responses(404, 409, 422),
                        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                              "description": "the assistant message, or with stream=true Server-Sent Events"}})
async def post_message(session_id: SessionId, body: MessageCreate, who: CurrentKey, triton: Triton,
                       request: Request) -> Any:
    session = await _load(session_id, who)
    if len(session["messages"]) + 2 > MAX_MESSAGES:
        raise Problem(409, "Session full", f"a session holds at most {MAX_MESSAGES} messages; start a new one",
                      kind="session-full")
    flags = red_flags(body.content)
    session["messages"].append({"role": "user", "content": body.content, "created_at": _now(), "red_flags": flags})
    await _save(session)
    answer = _answer(triton, session, flags)
    if not body.stream:
        message: dict[str, Any] = {}
        async for event, data in answer:
            if event == "message":
                message = data
        return MessagePublic(**message)

    first = await anext(answer)  # errors before the first byte still become problems

    async def events() -> AsyncIterator[str]:
        yield _sse(*first)
        try:
            async for event, data in answer:
                if await request.is_disconnected():
                    return
                yield _sse(event, MessagePublic(**data).model_dump(mode="json") if event == "message" else data)
        except Problem as problem:
            yield _sse("error", {"status": problem.status, "detail": problem.detail})
        except asyncio.CancelledError:
            raise

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

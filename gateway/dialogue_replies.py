"""The assistant's reply in a dialogue session, piece by piece, and its Server-Sent Events.

Safety runs here, outside the model: a message with red-flag symptoms is answered with an
urgent-care instruction and the model is not asked; every answer carries the not-a-diagnosis
notice; claims of certainty are rewritten as they stream (``services.dialogue.safety``). The model
``dialogue_generate`` is decoupled: it streams token pieces, with its predicted dialogue type,
action and slots (``meta``) on the first response and ``done`` on the last.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse
from tritonclient.utils import InferenceServerException

from core.capabilities import DIALOGUE
from gateway.catalog import provenance
from gateway.dialogue_sessions import now, save
from gateway.problems import Problem
from gateway.schemas import MessagePublic
from gateway.triton_client import TritonClient, triton_problem
from services.dialogue.safety import NOTICE, Hedger, urgent_reply

MODEL = DIALOGUE.model or "dialogue_generate"
MAX_NEW_TOKENS = 80
STREAM_TIMEOUT_S = 180.0


async def _generate(triton: TritonClient, history: list[dict[str, str]]) -> AsyncIterator[tuple[str, dict | None]]:
    """(text piece, meta) pairs from the model; meta on the first and the last response."""
    payload = json.dumps({"messages": history, "max_new_tokens": MAX_NEW_TOKENS}).encode()
    request = {"request": np.array([payload], dtype=np.object_)}
    try:
        async with aclosing(triton.stream(MODEL, request, ["text", "meta"], STREAM_TIMEOUT_S)) as responses:
            async for outputs in responses:
                raw = outputs["meta"][0]
                meta = json.loads(raw) if raw else None
                yield outputs["text"][0].decode(), meta
                if meta and meta.get("done"):
                    return
    except InferenceServerException as error:
        raise triton_problem(error, MODEL) from error


def _words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


async def answer(triton: TritonClient, session: dict[str, Any], flags: list[str]) -> AsyncIterator[tuple[str, dict]]:
    """The reply to the session's last message as events: ("meta", {...}), ("token", {"text"}), …, and
    finally ("message", the stored assistant message)."""
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
               "created_at": now(), "notice": NOTICE, "red_flags": flags, "instruction": instruction,
               "model": None if flags else provenance(MODEL)}
    session["messages"].append(message)
    await save(session)
    yield "message", message


async def whole(events: AsyncIterator[tuple[str, dict]]) -> MessagePublic:
    """The reply as one message (the last event)."""
    message: dict[str, Any] = {}
    async for event, data in events:
        if event == "message":
            message = data
    return MessagePublic(**message)


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def event_stream(events: AsyncIterator[tuple[str, dict]], request: Request) -> StreamingResponse:
    """The reply as Server-Sent Events; an error before the first event is still a problem answer, a later
    one an ``error`` event."""
    first = await anext(events)

    async def lines() -> AsyncIterator[str]:
        yield _sse(*first)
        try:
            async for event, data in events:
                if await request.is_disconnected():
                    return
                yield _sse(event, MessagePublic(**data).model_dump(mode="json") if event == "message" else data)
        except Problem as problem:
            yield _sse("error", {"status": problem.status, "detail": problem.detail})

    return StreamingResponse(lines(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

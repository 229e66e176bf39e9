"""Consultation dialogue (InsMed): sessions and messages.

Needs the model ``dialogue_generate`` (python backend, decoupled: it streams token pieces). Sessions
are kept in Redis (``gateway/dialogue_sessions.py``); the reply, with its safety rules, is
``gateway/dialogue_replies.py``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request, status

from core.capabilities import DIALOGUE
from gateway import dialogue_sessions as sessions
from gateway.auth import CurrentKey
from gateway.capabilities import capability_router
from gateway.deps import Triton
from gateway.dialogue_replies import answer, event_stream, whole
from gateway.problems import problem_responses
from gateway.schemas import MessageCreate, MessagePublic, SessionCreate, SessionPublic
from services.dialogue.safety import red_flags

router = capability_router(DIALOGUE, "dialogue", whole=True)

SessionId = Annotated[str, PathParam(max_length=64, examples=["c2f1e0d9b8a7"])]


@router.post("/sessions", status_code=status.HTTP_201_CREATED, summary="Start a consultation",
             responses=problem_responses(422))
async def create_session(body: SessionCreate, who: CurrentKey) -> SessionPublic:
    return SessionPublic.from_session(await sessions.create(who, body.language, body.context))


@router.get("/sessions/{session_id}", summary="A consultation and its history", responses=problem_responses(404))
async def get_session(session_id: SessionId, who: CurrentKey) -> SessionPublic:
    return SessionPublic.from_session(await sessions.load(session_id, who))


@router.post("/sessions/{session_id}/messages", summary="Send a message, get the reply (whole or streamed)",
             response_model=MessagePublic, responses={**problem_responses(404, 409, 422),
                        200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                              "description": "the assistant message, or with stream=true Server-Sent Events"}})
async def post_message(session_id: SessionId, body: MessageCreate, who: CurrentKey, triton: Triton,
                       request: Request) -> Any:
    session = await sessions.load(session_id, who)
    flags = red_flags(body.content)
    await sessions.add_user_message(session, body.content, flags)
    events = answer(triton, session, flags)
    return await event_stream(events, request) if body.stream else await whole(events)

"""Consultation dialogue (InsMed): sessions and messages.

Needs the model ``dialogue_generate``; until it is built every route answers 503 naming it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from gateway.auth import require
from gateway.capabilities import DIALOGUE, not_wired, require_available
from gateway.problems import problem_responses
from gateway.schemas import SHA
from medstack.keys import Scope

router = APIRouter(
    prefix="/v1/dialogue", tags=["dialogue"], dependencies=[require(Scope.DIALOGUE), require_available(DIALOGUE)],
    responses=problem_responses(401, 403, 429, 503),
)

SessionId = Annotated[str, PathParam(max_length=64, examples=["c2f1e0d9b8a7"])]


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"language": "en"}]})

    language: Literal["en", "zh"] = "en"
    context: str | None = Field(None, max_length=2000, description="optional setting, e.g. 'triage'; no identifiers")


class MessageCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"content": "I have had a headache and a stiff neck since yesterday.", "stream": False}]})

    content: str = Field(min_length=1, max_length=4000)
    stream: bool = Field(False, description="true: answer as Server-Sent Events, one token per event")


class MessagePublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "role": "assistant", "created_at": "2026-11-29T18:00:03Z",
        "content": "A headache with a stiff neck can be serious. Do you have a fever or sensitivity to light?",
        "red_flags": ["possible meningitis: seek urgent care"],
        "model": {"name": "dialogue_generate", "version": "1", "sha256": SHA},
    }]})

    role: Literal["user", "assistant"]
    content: str
    created_at: datetime
    red_flags: list[str] = Field(default_factory=list)
    model: dict[str, str] | None = None


class SessionPublic(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "c2f1e0d9b8a7", "language": "en", "created_at": "2026-11-29T18:00:00Z", "messages": []}]})

    id: str
    language: str
    created_at: datetime
    messages: list[MessagePublic]


@router.post("/sessions", status_code=status.HTTP_201_CREATED, summary="Start a consultation (needs dialogue_generate)",
             responses=problem_responses(422))
async def create_session(body: SessionCreate) -> SessionPublic:
    raise not_wired(DIALOGUE)


@router.get("/sessions/{session_id}", summary="A consultation and its history (needs dialogue_generate)",
            responses=problem_responses(404))
async def get_session(session_id: SessionId) -> SessionPublic:
    raise not_wired(DIALOGUE)


@router.post("/sessions/{session_id}/messages", summary="Send a message, get the reply (needs dialogue_generate)",
             responses=problem_responses(404, 422))
async def post_message(session_id: SessionId, body: MessageCreate) -> MessagePublic:
    raise not_wired(DIALOGUE)

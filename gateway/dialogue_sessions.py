"""Dialogue sessions in Redis: one JSON document per session under ``medstack:dialogue:session:<id>``,
its TTL refreshed on every write, at most ``MAX_MESSAGES`` messages; a session is visible only to the
key that created it (and admins). Redis not answering is a 503 ``service-unavailable``.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.settings import settings
from gateway.auth import Principal
from gateway.problems import Problem

SESSION_TTL_S = 2 * 3600  # idle sessions expire
MAX_MESSAGES = 40  # user + assistant messages per session

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


def now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


async def save(session: dict[str, Any]) -> None:
    try:
        await _redis().set(_key(session["id"]), json.dumps(session), ex=SESSION_TTL_S)
    except (RedisError, OSError) as error:
        raise _store_down(error) from error


async def create(owner: Principal, language: str, context: str | None) -> dict[str, Any]:
    session = {"id": secrets.token_hex(8), "owner": owner.id, "language": language, "context": context,
               "created_at": now(), "messages": []}
    await save(session)
    return session


async def load(session_id: str, who: Principal) -> dict[str, Any]:
    """The session, if it exists and ``who`` may see it (404 ``session-not-found`` otherwise)."""
    try:
        raw = await _redis().get(_key(session_id))
    except (RedisError, OSError) as error:
        raise _store_down(error) from error
    session = json.loads(raw) if raw else None
    if session is None or (session["owner"] != who.id and not who.is_admin):
        raise Problem(404, "Session not found", f"no dialogue session {session_id} (expired after "
                      f"{SESSION_TTL_S // 60} idle minutes, or not visible to this key)", kind="session-not-found")
    return session  # type: ignore[no-any-return]


async def add_user_message(session: dict[str, Any], content: str, flags: list[str]) -> None:
    """Store the user's message; 409 ``session-full`` when the answer to it would not fit."""
    if len(session["messages"]) + 2 > MAX_MESSAGES:
        raise Problem(409, "Session full", f"a session holds at most {MAX_MESSAGES} messages; start a new one",
                      kind="session-full")
    session["messages"].append({"role": "user", "content": content, "created_at": now(), "red_flags": flags})
    await save(session)

"""Authentication (API key), authorisation (scope) and the per-key rate limit, as dependencies.

Routers declare ``dependencies=[require(Scope.JOBS)]``; handlers that need to know *who* asks
take ``CurrentKey``. Order: no or unknown key → 401 with ``WWW-Authenticate``; over the key's
rate → 429 with ``Retry-After``; key without the scope → 403.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from core.db import session_factory
from core.keys import Scope, find_active_key
from core.settings import settings
from gateway.audit import audit_info
from gateway.observability import RATE_LIMITED
from gateway.problems import Problem

bearer_scheme = HTTPBearer(auto_error=False, description="`Authorization: Bearer msk_…`")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: msk_…`")

CHALLENGE = 'Bearer realm="medstack"'


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    scopes: tuple[str, ...]
    rate_per_s: float
    burst: int

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN.value in self.scopes

    def may(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes


class KeyCache:
    """Verified keys for ``ttl_s`` seconds, so most requests skip the database.

    A key revoked through this process's admin API is dropped at once; one revoked elsewhere (the
    CLI, another gateway process) stops working within ``ttl_s`` (``MEDSTACK_KEY_CACHE_S``).
    """

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> tuple[bool, Principal | None]:
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return False, None
        return True, entry[1]

    def put(self, digest: str, principal: Principal | None) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (time.monotonic(), principal)

    def forget(self, key_id: str) -> None:
        with self._lock:
            for digest in [d for d, (_, p) in self._entries.items() if p is not None and p.id == key_id]:
                del self._entries[digest]


key_cache = KeyCache(settings.key_cache_s)


def _lookup(key: str) -> Principal | None:
    with session_factory()() as db:
        record = find_active_key(db, key)
        if record is None:
            return None
        rate = settings.rate_limit_per_s if record.rate_per_s is None else record.rate_per_s
        burst = settings.rate_limit_burst if record.burst is None else record.burst
        return Principal(record.id, record.name, tuple(record.scopes), rate, burst)


async def current_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    header_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    key = bearer.credentials if bearer is not None else header_key
    if not key:
        raise Problem(401, "Unauthorized", "send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
                      kind="unauthorized", headers={"WWW-Authenticate": CHALLENGE})
    key = key.strip()
    digest = hashlib.sha256(key.encode()).hexdigest()
    cached, principal = key_cache.get(digest)
    if not cached:
        principal = await run_in_threadpool(_lookup, key)
        if principal is not None:  # unknown keys are not cached: a new key works at once
            key_cache.put(digest, principal)
    if principal is None:
        raise Problem(401, "Unauthorized", "unknown or revoked API key", kind="invalid-key",
                      headers={"WWW-Authenticate": CHALLENGE + ', error="invalid_token"'})
    audit_info(request).api_key_id = principal.id
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        decision = await limiter.take(principal.id, principal.rate_per_s, principal.burst)
        if not decision.allowed:
            RATE_LIMITED.inc()
            raise Problem(429, "Too many requests",
                          f"rate limit of {principal.rate_per_s:g} requests/s (burst {principal.burst}) for this "
                          f"key; retry after {decision.retry_after_s} s", kind="rate-limited",
                          headers={"Retry-After": str(decision.retry_after_s)})
    return principal


CurrentKey = Annotated[Principal, Depends(current_key)]


def require(scope: Scope) -> Any:
    """A router/route dependency: the caller's key must hold ``scope`` (or ``admin``)."""

    async def _check(principal: CurrentKey) -> None:
        if not principal.may(scope.value):
            raise Problem(403, "Forbidden", f"this key lacks the scope {scope.value!r}", kind="forbidden",
                          required_scope=scope.value)

    return Depends(_check)

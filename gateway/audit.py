"""The audit trail: one database row per API request.

Handlers fill the request's ``AuditInfo`` (which model and version, which input digest, which
job); the middleware adds who (key id), route template, status, outcome and duration, and hands
the record to ``AuditWriter``, which inserts in batches from a background task so a request never
waits for the audit commit. Records still queued are written at shutdown; a crash can lose at most
the records of the last half second (``linger_s``), which the JSON log also holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from fastapi import Request
from sqlalchemy import insert
from starlette.concurrency import run_in_threadpool

from core.db import AuditRecord, session_factory

log = logging.getLogger(__name__)

# health, metrics, API docs and the web UI's static files: no key, no patient data, nothing to audit
UNAUDITED = frozenset({"/livez", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                       "/ui", "/ui/{path:path}"})


@dataclass
class AuditInfo:
    api_key_id: str | None = None
    model: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    input_sha256: str | None = None
    job_id: str | None = None

    def model_used(self, name: str, version: Any = None, sha256: str | None = None) -> None:
        self.model = name
        self.model_version = None if version is None else str(version)
        self.model_sha256 = sha256


def audit_info(request: Request) -> AuditInfo:
    info = getattr(request.state, "audit", None)
    if info is None:  # outside the middleware (unit tests)
        info = AuditInfo()
        request.state.audit = info
    return info


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    if status == 429:
        return "limited"
    return "rejected" if status < 500 else "error"


class AuditWriter:
    """Inserts queued records in batches: after the first record of a batch it waits ``linger_s`` for
    more, so a busy gateway commits a few times a second instead of once per request (each commit is a
    thread hand-off and a database transaction that compete with requests for the CPU)."""

    def __init__(self, max_queue: int = 10_000, batch: int = 500, linger_s: float = 0.5) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(max_queue)
        self.batch = batch
        self.linger_s = linger_s
        self._pending: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    def submit(self, at: datetime, request_id: str, method: str, route: str, status: int,
               duration_ms: float, info: AuditInfo) -> None:
        row = {"at": at, "request_id": request_id, "method": method, "route": route[:128], "status": status,
               "outcome": outcome_of(status), "duration_ms": round(duration_ms, 3), **asdict(info)}
        try:
            self.queue.put_nowait(row)
        except asyncio.QueueFull:
            log.error("audit queue full; record dropped", extra={"route": route, "status": status})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while True:
            self._pending = [await self.queue.get()]
            await asyncio.sleep(self.linger_s)
            while len(self._pending) < self.batch and not self.queue.empty():
                self._pending.append(self.queue.get_nowait())
            rows, self._pending = self._pending, []
            try:
                await run_in_threadpool(_insert, rows)
            except Exception:  # the database may blink; the log line of each request remains
                log.exception("audit write failed; %d records lost", len(rows))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rows, self._pending = self._pending, []  # taken from the queue, waiting out the linger
        while not self.queue.empty():
            rows.append(self.queue.get_nowait())
        if rows:
            await run_in_threadpool(_insert, rows)


def _insert(rows: list[dict[str, Any]]) -> None:
    with session_factory().begin() as db:
        db.execute(insert(AuditRecord), rows)

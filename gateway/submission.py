"""Job submission shared by every capability: input → job row → Celery, with idempotency.

``Idempotency-Key`` (or the form field ``transaction_id``) names a request. The key is scoped to
the API key that sends it. The request's digest — kind, model, priority, parameters and the
sha256 of the uploaded input — is stored with the job:

* same key, same digest → the existing job, ``200`` with ``Idempotent-Replayed: true``;
* same key, different digest → ``409``;
* two identical requests racing → the database's unique index decides; the loser replays.

The input is saved before the lookup (its digest is part of the request), into the folder of the
would-be job, which is removed again when the request turns out to be a replay or a conflict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from core.artifacts import ArtifactStore
from core.capabilities import Capability
from core.db import Job
from core.settings import settings
from gateway.audit import audit_info
from gateway.auth import Principal
from gateway.catalog import manifest_of
from gateway.problems import Problem
from gateway.records import delete_job, insert_job, job_by_idempotency_key
from gateway.uploads import SavedInput

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,100}$")


def check_idempotency_key(header: str | None, form_value: str | None = None) -> str | None:
    if header is not None and form_value is not None and header != form_value:
        raise Problem(422, "Invalid request", "Idempotency-Key and transaction_id differ; send one of them",
                      kind="validation-error")
    value = header if header is not None else form_value
    if value is None:
        return None
    if not IDEMPOTENCY_KEY.match(value):
        raise Problem(422, "Invalid request", "Idempotency-Key must be 1–100 visible ASCII characters",
                      kind="validation-error")
    return value


@dataclass(frozen=True)
class JobRequest:
    kind: str
    model: str
    priority: int
    params: dict[str, Any]
    idempotency_key: str | None
    task: str
    queue: str


def job_request(capability: Capability, params: dict[str, Any], *, model: str | None = None, priority: int = 5,
                idempotency_key: str | None = None) -> JobRequest:
    """A job of ``capability`` (its job kind, task and queue from the registry) on ``model`` (default: its own)."""
    return JobRequest(capability.job_kind or capability.name, model or capability.model or "", priority, params,
                      idempotency_key, capability.task or "", capability.queue or "")


@dataclass(frozen=True)
class Submitted:
    job: Job
    replayed: bool


def celery_priority(priority: int) -> int:
    # API: 9 is most urgent. Celery on Redis sorts the other way round (0 is served first).
    return 9 - priority


def _request_digest(spec: JobRequest, saved: SavedInput) -> str:
    canonical = json.dumps({"kind": spec.kind, "model": spec.model, "priority": spec.priority,
                            "params": spec.params, "input_sha256": saved.sha256}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay_or_conflict(existing: Job, digest: str, client_key: str) -> Submitted:
    if existing.request_sha256 != digest:
        raise Problem(409, "Idempotency key reused",
                      f"Idempotency-Key {client_key!r} was already used for a different request "
                      f"(job {existing.id}); use a new key for a new request", kind="idempotency-key-reused",
                      job_id=existing.id)
    return Submitted(existing, replayed=True)


async def submit(
    request: Request, principal: Principal, spec: JobRequest, store: ArtifactStore,
    save_input: Callable[[Any], Awaitable[SavedInput]],
) -> Submitted:
    """Save the input via ``save_input(directory)``, then create (or replay) the job and queue it."""
    job_id = str(uuid.uuid4())
    directory = store.job_dir(job_id)
    try:
        saved = await save_input(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    audit = audit_info(request)
    audit.input_sha256 = saved.sha256
    manifest = manifest_of(spec.model) or {}
    audit.model_used(spec.model, manifest.get("version"), manifest.get("sha256"))
    digest = _request_digest(spec, saved)

    scoped = f"{principal.id}:{spec.idempotency_key}" if spec.idempotency_key else None
    if scoped is not None:
        existing = await run_in_threadpool(job_by_idempotency_key, scoped)
        if existing is not None:
            shutil.rmtree(directory, ignore_errors=True)
            audit.job_id = existing.id
            return _replay_or_conflict(existing, digest, spec.idempotency_key or "")

    request_id = getattr(request.state, "request_id", None)
    job = Job(
        id=job_id, kind=spec.kind, model=spec.model, priority=spec.priority, input_sha256=saved.sha256,
        params={**({"input": saved.name} if saved.name else {}), **spec.params},
        idempotency_key=scoped, api_key_id=principal.id,
        request_sha256=digest, request_id=request_id,
    )
    inserted = await run_in_threadpool(insert_job, job)
    if inserted is None:  # lost a race for the same idempotency key
        shutil.rmtree(directory, ignore_errors=True)
        existing = await run_in_threadpool(job_by_idempotency_key, scoped or "")
        if existing is None:
            raise Problem(409, "Conflict", "a concurrent request changed this job; retry", kind="conflict")
        audit.job_id = existing.id
        return _replay_or_conflict(existing, digest, spec.idempotency_key or "")
    audit.job_id = job.id
    try:
        await run_in_threadpool(_enqueue, spec, job.id, request_id)
    except Exception as error:
        log.error("job %s: broker refused the task (%s); job withdrawn", job.id, type(error).__name__)
        await run_in_threadpool(delete_job, job.id)
        shutil.rmtree(directory, ignore_errors=True)
        raise Problem(503, "Broker unavailable", "the job queue (Redis) did not accept the job; retry later",
                      kind="broker-unavailable", headers={"Retry-After": str(settings.retry_after_s)}) from error
    return Submitted(job, replayed=False)


def _enqueue(spec: JobRequest, job_id: str, request_id: str | None) -> None:
    from workers.celery_app import celery_app

    # ignore_result: the job row is the result; without it Celery would first subscribe to the result
    # backend, which retries for ~20 s when Redis is down instead of failing the request at once
    celery_app.send_task(
        spec.task, args=[job_id], task_id=job_id, queue=spec.queue, priority=celery_priority(spec.priority),
        headers={"request_id": request_id or ""}, ignore_result=True,
        retry=True, retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
    )

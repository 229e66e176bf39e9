"""Key management and the audit trail over HTTP (scope: admin); the CLI does the same locally."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi import Path as PathParam

from core.keys import BOOTSTRAP_ID, KeyNotFound, Scope, create_key, list_keys, revoke_key
from gateway.auth import key_cache, require
from gateway.deps import DbSession
from gateway.problems import Problem, problem_responses
from gateway.records import audit_records
from gateway.schemas import AuditPublic, AuditsPublic, KeyCreate, KeyCreated, KeyPublic, KeysPublic

router = APIRouter(
    prefix="/v1/admin", tags=["admin"], dependencies=[require(Scope.ADMIN)],
    responses=problem_responses(401, 403, 429),
)

KeyId = Annotated[str, PathParam(max_length=32, examples=["3f9c2a1b7d6e5f40"])]


@router.get("/keys", summary="API keys (never the keys themselves)")
def get_keys(db: DbSession, active: Annotated[bool, Query(description="hide revoked keys")] = False) -> KeysPublic:
    return KeysPublic(data=[KeyPublic.from_record(r) for r in list_keys(db, include_revoked=not active)])


@router.post("/keys", status_code=status.HTTP_201_CREATED, summary="Create a key; the answer holds it this once",
             responses=problem_responses(422))
def post_key(body: KeyCreate, db: DbSession) -> KeyCreated:
    try:
        record, key = create_key(db, body.name, body.scopes, rate_per_s=body.rate_per_s, burst=body.burst)
    except ValueError as error:
        raise Problem(422, "Invalid request", str(error), kind="validation-error") from error
    db.commit()
    return KeyCreated(**KeyPublic.from_record(record).model_dump(), key=key)


@router.delete("/keys/{key_id}", summary="Revoke a key", responses=problem_responses(404, 409))
def delete_key(key_id: KeyId, db: DbSession) -> KeyPublic:
    if key_id == BOOTSTRAP_ID:
        raise Problem(409, "Managed key", "the bootstrap key follows MEDSTACK_BOOTSTRAP_KEY; unset the variable "
                      "and restart the gateway to revoke it", kind="managed-key")
    try:
        record = revoke_key(db, key_id)
    except KeyNotFound as error:
        raise Problem(404, "Key not found", f"no key with id {key_id!r}", kind="key-not-found") from error
    db.commit()
    key_cache.forget(key_id)
    return KeyPublic.from_record(record)


@router.get("/audit", summary="Audit records, newest first")
def get_audit(
    db: DbSession,
    api_key_id: Annotated[str | None, Query(max_length=32)] = None,
    job_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=40, description="ISO 8601 time, e.g. 2026-11-29T18:00:00Z",
                                       json_schema_extra={"format": "date-time"})] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditsPublic:
    rows = audit_records(db, api_key_id, job_id, None if since is None else _utc_time(since), limit)
    return AuditsPublic(data=[AuditPublic.from_record(r) for r in rows])


def _utc_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise Problem(422, "Invalid request", "since: not an ISO 8601 time (e.g. 2026-11-29T18:00:00Z)",
                      kind="validation-error") from error
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

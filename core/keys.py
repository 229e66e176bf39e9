"""API keys: scopes per capability, stored as sha256 digests, shown in plain text exactly once.

A key is ``msk_`` followed by 43 URL-safe characters (256 random bits), so a plain sha256 is a
sound digest: there is nothing to brute-force, and a lookup by digest needs no per-key salt.

    with session_factory().begin() as db:
        record, key = create_key(db, name="pacs-router", scopes=["segmentation", "jobs"])
    # hand `key` to the client now; only record.key_sha256 is kept

``MEDSTACK_BOOTSTRAP_KEY`` gives the embedded stack (and tests) an admin key without a CLI step:
the gateway makes it the key with id ``bootstrap`` at start, and revokes that row when the
variable is unset again.
"""

from __future__ import annotations

import difflib
import hashlib
import secrets
from collections.abc import Iterable
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import ApiKey, utcnow
from core.settings import check_bootstrap_key

KEY_PREFIX = "msk_"
BOOTSTRAP_ID = "bootstrap"


class Scope(StrEnum):
    """What a key may do; ``admin`` may do everything."""

    SEGMENTATION = "segmentation"
    LOCALIZATION = "localization"
    REPORT = "report"
    DIALOGUE = "dialogue"
    VALUATION = "valuation"
    FEWSHOT = "fewshot"  # few-shot tasks: a client's own classifier (adapted head) and its predictions
    JOBS = "jobs"
    MODELS = "models"
    METRICS = "metrics"
    ADMIN = "admin"

    @classmethod
    def parse(cls, value: str) -> Scope:
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = [s.value for s in cls]
            close = difflib.get_close_matches(value.strip().lower(), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown scope {value!r} (scopes: {', '.join(names)}){hint}") from None


class KeyNotFound(LookupError):
    pass


def parse_scopes(values: str | Iterable[str]) -> list[str]:
    """``"segmentation, jobs"`` or a list → sorted, de-duplicated scope names; ValueError if unknown."""
    items = values.split(",") if isinstance(values, str) else list(values)
    scopes = sorted({Scope.parse(v).value for v in items if v.strip()})
    if not scopes:
        raise ValueError("a key needs at least one scope")
    return scopes


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def has_scope(record: ApiKey, scope: str) -> bool:
    return Scope.ADMIN.value in record.scopes or scope in record.scopes


def _check_limits(rate_per_s: float | None, burst: int | None) -> None:
    if rate_per_s is not None and rate_per_s < 0:
        raise ValueError("rate_per_s must be ≥ 0 (0 means unlimited)")
    if burst is not None and burst < 1:
        raise ValueError("burst must be ≥ 1")


def create_key(
    db: Session, name: str, scopes: str | Iterable[str], rate_per_s: float | None = None, burst: int | None = None
) -> tuple[ApiKey, str]:
    """A new key; returns the record and the plain key (the only time it exists outside the client)."""
    name = name.strip()
    if not name or len(name) > 64:
        raise ValueError("name must be 1–64 characters")
    _check_limits(rate_per_s, burst)
    key = generate_key()
    record = ApiKey(
        id=secrets.token_hex(8), name=name, prefix=key[: len(KEY_PREFIX) + 6], key_sha256=hash_key(key),
        scopes=parse_scopes(scopes), rate_per_s=rate_per_s, burst=burst, created_at=utcnow(),
    )
    db.add(record)
    db.flush()
    return record, key


def list_keys(db: Session, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(db.scalars(query))


def revoke_key(db: Session, key_id: str) -> ApiKey:
    record = db.get(ApiKey, key_id)
    if record is None:
        raise KeyNotFound(key_id)
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def find_active_key(db: Session, key: str) -> ApiKey | None:
    """The unrevoked key whose digest matches ``key``, else None."""
    if not key or len(key) > 256:
        return None
    return db.scalars(
        select(ApiKey).where(ApiKey.key_sha256 == hash_key(key), ApiKey.revoked_at.is_(None))
    ).first()


def ensure_bootstrap_key(db: Session, key: str | None) -> ApiKey | None:
    """Make ``key`` the active admin key ``bootstrap``; with ``key`` None, revoke that row."""
    record = db.get(ApiKey, BOOTSTRAP_ID)
    if key is None:
        if record is not None and record.revoked_at is None:
            record.revoked_at = utcnow()
        return record
    check_bootstrap_key(key)
    digest = hash_key(key)
    if record is None:
        record = ApiKey(
            id=BOOTSTRAP_ID, name="bootstrap (MEDSTACK_BOOTSTRAP_KEY)", prefix=key[:6] + "…",
            key_sha256=digest, scopes=[Scope.ADMIN.value], created_at=utcnow(),
        )
        db.add(record)
    elif record.key_sha256 != digest or record.revoked_at is not None:
        record.key_sha256, record.prefix, record.revoked_at = digest, key[:6] + "…", None
    db.flush()
    return record


def create_local_key(name: str, scopes: str | Iterable[str], url: str | None = None) -> str:
    """Create a key directly in the configured database and return it: for scripts on the stack's
    own host (``make demo``), which need no admin key to get one."""
    from core.db import session_factory

    with session_factory(url).begin() as db:
        _, key = create_key(db, name, scopes)
    return key

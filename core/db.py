"""Persistence shared by gateway and workers: jobs, API keys, templates, few-shot tasks and the audit trail.

SQLite by default (a file in the run folder), PostgreSQL when ``MEDSTACK_DATABASE_URL`` says so
(``postgresql+psycopg://user:password@host/db``). The schema is owned by the alembic migrations in
``migrations/``: the first engine a process opens for a URL brings that database to the latest
revision (under a lock, so a gateway and a worker starting together do not race). Celery's own
result state is only a progress channel; the ``jobs`` table is the truth a client reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from core.settings import REPO_ROOT, settings

log = logging.getLogger(__name__)

MIGRATIONS = REPO_ROOT / "migrations"
# any constant works; it only has to be the same in every process that migrates
_PG_MIGRATION_LOCK = 0x6D656473


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINAL = (SUCCEEDED, FAILED, CANCELLED)
    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    kind: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    stage: Mapped[str] = mapped_column(String(32), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    priority: Mapped[int] = mapped_column(Integer, default=5)
    input_sha256: Mapped[str] = mapped_column(String(64))
    # "<api key id>:<client's Idempotency-Key>": a client's keys never collide with another's
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # added by revision 0002
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ApiKey(Base):
    """An API key: only the sha256 of the key is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # the first characters of the key, so an operator can tell keys apart without the secret
    prefix: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # None: the gateway default; 0: unlimited
    rate_per_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    burst: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Template(Base):
    """A localization template: a volume plus annotated points, embedded by one model version."""

    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    name: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(16), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    input_sha256: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # the embedding (npz: per structure RDR vectors and feature cubes); deferred: lists never load it
    features: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)


class FewshotTask(Base):
    """A few-shot task (services/fewshot): an encoder, a method and classes, adapted by the job with the same id.

    Its state is the job's (``jobs`` row ``id``); the worker fills ``head`` (``heads.Head.to_bytes``, a few KB)
    and ``provenance`` when the job succeeds."""

    __tablename__ = "fewshot_tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # = the adaptation job's id
    name: Mapped[str] = mapped_column(String(128))
    encoder: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(64))  # the encoder's Triton model
    class_names: Mapped[list[str]] = mapped_column(JSON, default=list)
    multi_label: Mapped[bool] = mapped_column(Boolean, default=False)
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    input_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    head_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # deferred: lists never load it
    head: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)


class AuditRecord(Base):
    """One row per API request: who, what, which model, which input digest, outcome, duration.

    Never patient data: no file names, no query strings, no bodies, only digests.
    """

    __tablename__ = "audit_records"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    request_id: Mapped[str] = mapped_column(String(64))
    api_key_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    method: Mapped[str] = mapped_column(String(8))
    route: Mapped[str] = mapped_column(String(128))
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    duration_ms: Mapped[float] = mapped_column(Float)
    model: Mapped[str | None] = mapped_column(String(64), nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(16), nullable=True)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


# ---- schema migrations ------------------------------------------------------------------------


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", (url or settings.sqlalchemy_url).replace("%", "%%"))
    return config


@contextlib.contextmanager
def _migration_lock(connection: Connection) -> Iterator[None]:
    """One migrating process at a time per database."""
    url = connection.engine.url
    if url.get_backend_name() == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        connection.commit()
        try:
            yield
        finally:
            connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
            connection.commit()
    elif url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        with open(Path(url.database).with_suffix(".migrate.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


def upgrade_schema(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision``; a no-op when it is there already."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as connection, _migration_lock(connection):
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


def schema_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite"):
        # WAL: the gateway reads while the worker writes progress. synchronous=NORMAL is WAL's
        # recommended pairing: no corruption on a crash, no fsync on every commit (an audit row per
        # request would otherwise wait for the disk)
        @event.listens_for(engine, "connect")
        def _pragma(conn, _record):  # type: ignore[no-untyped-def]
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")

    upgrade_schema(engine)
    return engine


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url or settings.sqlalchemy_url), expire_on_commit=False)

"""Alembic migrations: they build exactly the ORM's schema, go down cleanly, and adopt an old database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from core.db import Base, alembic_config, engine_for, schema_revision, session_factory, upgrade_schema

HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()  # the newest migration

def test_head_matches_the_models_and_downgrade_removes_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = engine_for(url)
    assert schema_revision(engine) == HEAD
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    config = alembic_config(url)
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        conn.commit()
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    upgrade_schema(engine)
    assert schema_revision(engine) == HEAD


def test_a_database_from_before_migrations_is_adopted_with_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = create_engine(f"sqlite:///{path}")
    with old.begin() as conn:  # the jobs table as create_all made it before alembic existed
        conn.execute(text(
            "CREATE TABLE jobs (id VARCHAR(36) PRIMARY KEY, kind VARCHAR(32) NOT NULL, model VARCHAR(64) NOT NULL, "
            "state VARCHAR(16) NOT NULL, stage VARCHAR(32) NOT NULL, progress FLOAT NOT NULL, "
            "priority INTEGER NOT NULL, "
            "input_sha256 VARCHAR(64) NOT NULL, idempotency_key VARCHAR(128) UNIQUE, params JSON NOT NULL, "
            "result JSON, error JSON, attempts INTEGER NOT NULL, created_at DATETIME NOT NULL, started_at DATETIME, "
            "finished_at DATETIME)"))
        conn.execute(text("CREATE INDEX ix_jobs_state ON jobs (state)"))
        conn.execute(text(
            "INSERT INTO jobs VALUES ('j1', 'segmentation', 'reference_hutissue', 'succeeded', 'done', 1.0, 5, "
            "'abc', NULL, '{\"input\": \"input.nii.gz\"}', NULL, NULL, 1, '2026-01-01 00:00:00', NULL, NULL)"))
    old.dispose()
    from core.db import Job

    with session_factory(f"sqlite:///{path}")() as db:
        job = db.get(Job, "j1")
        assert job is not None and job.params == {"input": "input.nii.gz"} and job.api_key_id is None
    assert {"api_keys", "audit_records", "templates"} <= set(inspect(engine_for(f"sqlite:///{path}")).get_table_names())

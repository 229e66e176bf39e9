"""Migrations on PostgreSQL: exactly the ORM's schema, reversible, and safe when processes start together."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from core.db import Base, alembic_config, engine_for, schema_revision
from core.settings import REPO_ROOT
from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh_pg(postgres_url: str):
    """A second, empty database next to the session's (which the PostgreSQL stack uses)."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"medstack_mig_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    engine_for.cache_clear()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_processes_migrating_at_once_leave_one_correct_schema(fresh_pg: str) -> None:
    code = ("import sys; from core.db import engine_for, schema_revision; "
            "print(schema_revision(engine_for(sys.argv[1])))")
    procs = [subprocess.Popen([sys.executable, "-c", code, fresh_pg], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    assert {out.strip() for out, _ in results} == {_head(fresh_pg)}
    engine = engine_for(fresh_pg)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_downgrade_and_upgrade_again(fresh_pg: str) -> None:
    engine = engine_for(fresh_pg)
    config = alembic_config(fresh_pg)
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
        conn.commit()
    assert schema_revision(engine) == "0001"
    assert "api_key_id" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
    assert "features" not in {c["name"] for c in inspect(engine).get_columns("templates")}
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
    assert schema_revision(engine) == _head(fresh_pg)
    assert "features" in {c["name"] for c in inspect(engine).get_columns("templates")}


def _head(url: str) -> str:
    """The newest migration's revision."""
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()

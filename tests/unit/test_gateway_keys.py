"""API keys: scopes, hashing at rest, revocation, the bootstrap key, the CLI and the gateway settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from typer.testing import CliRunner

from core.db import ApiKey, engine_for, session_factory
from core.keys import (
    BOOTSTRAP_ID,
    KeyNotFound,
    create_key,
    ensure_bootstrap_key,
    find_active_key,
    has_scope,
    hash_key,
    list_keys,
    parse_scopes,
    revoke_key,
)
from core.settings import Settings, settings


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'keys.db'}"


def test_scopes_are_checked_and_a_typo_gets_a_suggestion() -> None:
    assert parse_scopes("jobs, segmentation,jobs") == ["jobs", "segmentation"]
    with pytest.raises(ValueError, match="did you mean 'segmentation'"):
        parse_scopes("segmentaton")
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes(" , ")


def test_only_the_digest_is_stored_and_revocation_takes_effect(db_url: str) -> None:
    sessions = session_factory(db_url)
    with sessions.begin() as db:
        record, key = create_key(db, "pacs-router", ["segmentation", "jobs"])
        key_id = record.id
    assert key.startswith("msk_") and len(key) >= 40
    with engine_for(db_url).connect() as conn:
        dump = json.dumps([list(map(str, row)) for row in conn.execute(text("SELECT * FROM api_keys"))])
    assert key not in dump and hash_key(key) in dump
    with sessions() as db:
        found = find_active_key(db, key)
        assert found is not None and found.id == key_id
        assert has_scope(found, "jobs") and not has_scope(found, "admin")
        assert find_active_key(db, key + "x") is None
    with sessions.begin() as db:
        revoke_key(db, key_id)
    with sessions() as db:
        assert find_active_key(db, key) is None
        assert [k.revoked_at is not None for k in list_keys(db)] == [True]
        with pytest.raises(KeyNotFound):
            revoke_key(db, "nope")


def test_bootstrap_key_is_created_rotated_and_revoked(db_url: str) -> None:
    sessions = session_factory(db_url)
    first, second = "a" * 8 + "B" * 8 + "0123456789xyz", "Q" * 4 + "w9e8r7t6y5u4i3o2p1z0x9c8"
    with sessions.begin() as db:
        ensure_bootstrap_key(db, first)
    with sessions.begin() as db:
        record = ensure_bootstrap_key(db, second)
        assert record is not None and record.scopes == ["admin"]
    with sessions() as db:
        assert find_active_key(db, first) is None
        found = find_active_key(db, second)
        assert found is not None and found.id == BOOTSTRAP_ID
    with sessions.begin() as db:
        ensure_bootstrap_key(db, None)
    with sessions() as db:
        assert find_active_key(db, second) is None
        with pytest.raises(ValueError, match="at least 24"):
            ensure_bootstrap_key(db, "short")


def test_gateway_settings_refuse_weak_or_production_bootstrap_keys() -> None:
    with pytest.raises(ValidationError, match="at least 24"):
        Settings(bootstrap_key="changeme")
    with pytest.raises(ValidationError, match="development only"):
        Settings(bootstrap_key="k3Yp9QzL0mWv7RtX2bN5cJ8d", environment="production")
    assert Settings(bootstrap_key="").bootstrap_key is None


def test_cli_create_list_revoke(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from medstack.cli import app

    monkeypatch.setattr(settings, "database_url", db_url)
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "ris", "--scopes", "jobs,segmentation"])
    assert created.exit_code == 0, created.output
    fields = dict(line.split(":", 1) for line in created.stdout.splitlines() if ":" in line)
    key_id, key = fields["id"].strip(), fields["key"].strip()
    listed = runner.invoke(app, ["keys", "list", "--json"])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert rows[0]["id"] == key_id and rows[0]["scopes"] == ["jobs", "segmentation"] and key not in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", key_id]).exit_code == 0
    assert runner.invoke(app, ["keys", "revoke", "missing"]).exit_code == 1
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--scopes", "admn"])
    assert bad.exit_code == 2 and "did you mean 'admin'" in bad.output
    with session_factory(db_url)() as db:
        assert db.get(ApiKey, key_id).revoked_at is not None


def test_a_local_script_can_make_itself_a_key(db_url: str) -> None:
    from core.keys import create_local_key

    key = create_local_key("demo", "segmentation,jobs", url=db_url)
    with session_factory(db_url)() as db:
        record = find_active_key(db, key)
        assert record is not None and record.name == "demo" and record.scopes == ["jobs", "segmentation"]

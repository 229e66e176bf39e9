"""``medstack keys``: create, list and revoke API keys in the configured database.

    medstack keys create --name pacs-router --scopes segmentation,jobs
    medstack keys list
    medstack keys revoke 3f9c2a1b7d6e5f40
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from core.db import session_factory
from core.keys import KeyNotFound, Scope, create_key, list_keys, revoke_key

keys_app = typer.Typer(help="API keys for the gateway (stored hashed; a key is shown once).", no_args_is_help=True)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="who or what uses the key, e.g. pacs-router")],
    scopes: Annotated[str, typer.Option("--scopes", help=f"comma-separated: {', '.join(s.value for s in Scope)}")],
    rate_per_s: Annotated[
        float | None, typer.Option("--rate-per-s", help="requests per second (default: gateway's; 0: unlimited)")
    ] = None,
    burst: Annotated[int | None, typer.Option("--burst", help="requests allowed at once above the rate")] = None,
) -> None:
    """Create a key and print it once."""
    try:
        with session_factory().begin() as db:
            record, key = create_key(db, name, scopes, rate_per_s=rate_per_s, burst=burst)
            key_id, granted = record.id, record.scopes
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"id:     {key_id}\nscopes: {','.join(granted)}\nkey:    {key}")
    typer.echo("Store the key now: only its sha256 is kept, it cannot be shown again.", err=True)


@keys_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per key")] = False,
    active: Annotated[bool, typer.Option("--active", help="hide revoked keys")] = False,
) -> None:
    """Keys with their scopes and state (never the keys themselves)."""
    with session_factory()() as db:
        records = list_keys(db, include_revoked=not active)
    for r in records:
        row = {
            "id": r.id, "name": r.name, "prefix": r.prefix, "scopes": r.scopes,
            "rate_per_s": r.rate_per_s, "burst": r.burst, "created_at": r.created_at.isoformat(),
            "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
        }
        if as_json:
            typer.echo(json.dumps(row))
        else:
            state = f"revoked {row['revoked_at'][:19]}" if r.revoked_at else "active"
            typer.echo(f"{r.id:16s}  {r.name:24s}  {r.prefix:11s}  {','.join(r.scopes):30s}  {state}")


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="the key's id (from `medstack keys list`)")]) -> None:
    """Revoke a key; requests with it are refused from now on."""
    try:
        with session_factory().begin() as db:
            revoke_key(db, key_id)
    except KeyNotFound as error:
        typer.echo(f"error: no key with id {key_id!r}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"revoked {key_id}")

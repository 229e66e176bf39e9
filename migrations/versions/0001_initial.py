"""Initial schema: the jobs table as the platform foundation created it, API keys, templates, audit.

Databases made before migrations existed (``create_all`` on first use) already hold ``jobs``;
this revision adopts such a table as it is instead of failing on it.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    if not sa.inspect(op.get_bind()).has_table("jobs"):
        op.create_table(
            "jobs",
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("model", sa.String(64), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("stage", sa.String(32), nullable=False),
            sa.Column("progress", sa.Float, nullable=False),
            sa.Column("priority", sa.Integer, nullable=False),
            sa.Column("input_sha256", sa.String(64), nullable=False),
            sa.Column("idempotency_key", sa.String(128), nullable=True, unique=True),
            sa.Column("params", sa.JSON, nullable=False),
            sa.Column("result", sa.JSON, nullable=True),
            sa.Column("error", sa.JSON, nullable=True),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        )
        op.create_index("ix_jobs_state", "jobs", ["state"])

    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("rate_per_s", sa.Float, nullable=True),
        sa.Column("burst", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(16), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_templates_api_key_id", "templates", ["api_key_id"])
    op.create_table(
        "audit_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("model_version", sa.String(16), nullable=True),
        sa.Column("model_sha256", sa.String(64), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=True),
        sa.Column("job_id", sa.String(36), nullable=True),
    )
    op.create_index("ix_audit_records_at", "audit_records", ["at"])
    op.create_index("ix_audit_records_api_key_id", "audit_records", ["api_key_id"])


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_table("templates")
    op.drop_table("api_keys")
    op.drop_index("ix_jobs_state", table_name="jobs")
    op.drop_table("jobs")

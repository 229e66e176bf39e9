"""Jobs remember who submitted them, the digest of the request, and the request id.

``api_key_id`` scopes reads and cancellation to the submitting key; ``request_sha256`` lets a
repeated ``Idempotency-Key`` be told apart from a different request under the same key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("api_key_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("request_sha256", sa.String(64), nullable=True))
        batch.add_column(sa.Column("request_id", sa.String(64), nullable=True))
    op.create_index("ix_jobs_api_key_id", "jobs", ["api_key_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_api_key_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("request_id")
        batch.drop_column("request_sha256")
        batch.drop_column("api_key_id")

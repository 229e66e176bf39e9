"""Few-shot tasks: encoder, method, classes, owner, and the adapted head with its provenance.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fewshot_tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("encoder", sa.String(32), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("multi_label", sa.Boolean(), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=True),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("provenance", sa.JSON(), nullable=True),
        sa.Column("head_sha256", sa.String(64), nullable=True),
        sa.Column("head", sa.LargeBinary(), nullable=True),
    )
    op.create_index("ix_fewshot_tasks_api_key_id", "fewshot_tasks", ["api_key_id"])


def downgrade() -> None:
    op.drop_index("ix_fewshot_tasks_api_key_id", table_name="fewshot_tasks")
    op.drop_table("fewshot_tasks")

"""The response cache: validated LM responses by exact request, and cache hits on steps.

A ``response_cache`` table (one row per request key, with its TTL and hit count) and, on
``steps``, ``cache_hit`` and ``cost_saved_usd`` (what the cached response cost when it was made).
Existing steps are not hits.

Revision ID: 0006_response_cache
Revises: 0005_cost_and_rate_waits
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_response_cache"
down_revision: str | None = "0005_cost_and_rate_waits"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the column types: a migration must not change when tables.py does.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
NAME = 200


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "response_cache",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(NAME), nullable=False),
        sa.Column("module", sa.String(NAME), nullable=False),
        sa.Column("backend", sa.String(NAME), nullable=False),
        sa.Column("model", sa.String(NAME), nullable=False),
        sa.Column("response", JSON, nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("hits", sa.Integer(), nullable=False, server_default="0"),
        _ts("created_at", nullable=False),
        _ts("expires_at"),
        _ts("last_hit_at"),
    )
    op.create_index("ix_response_cache_program", "response_cache", ["program"])
    op.create_index("ix_response_cache_expires", "response_cache", ["expires_at"])
    with op.batch_alter_table("steps") as batch:
        batch.add_column(
            sa.Column("cache_hit", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("cost_saved_usd", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("steps") as batch:
        batch.drop_column("cost_saved_usd")
        batch.drop_column("cache_hit")
    op.drop_index("ix_response_cache_expires", table_name="response_cache")
    op.drop_index("ix_response_cache_program", table_name="response_cache")
    op.drop_table("response_cache")

"""Record what runs cost and how long batches waited for rate limits.

``cost_usd`` (US dollars) on executions, steps, attempts and batches; ``rate_limited_s`` on
batches. Existing rows cost 0.

Revision ID: 0005_cost_and_rate_waits
Revises: 0004_optimizations
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_cost_and_rate_waits"
down_revision: str | None = "0004_optimizations"
branch_labels: str | None = None
depends_on: str | None = None

_COST_TABLES = ("executions", "steps", "attempts", "batches")


def upgrade() -> None:
    for table in _COST_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"))
    with op.batch_alter_table("batches") as batch:
        batch.add_column(
            sa.Column("rate_limited_s", sa.Float(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("rate_limited_s")
    for table in reversed(_COST_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cost_usd")

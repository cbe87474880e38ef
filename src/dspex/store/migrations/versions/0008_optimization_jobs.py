"""Resumable optimization runs: the lease of the process running one, and what it was asked.

``worker_id``, ``lease_token`` and ``lease_expires_at`` hold the lease of the process running an
optimization (renewed by a heartbeat: a run whose lease expired has lost its process);
``attempts`` counts how many times it was started; ``request`` keeps the training and
validation sets and options, so a run can be resumed from its id alone. Existing rows have
neither (they cannot be resumed).

Revision ID: 0008_optimization_jobs
Revises: 0005_cost_and_rate_waits
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008_optimization_jobs"
down_revision: str | None = "0005_cost_and_rate_waits"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copy of the column type: a migration must not change when tables.py does.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("optimizations") as batch:
        batch.add_column(sa.Column("worker_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_token", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("request", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("optimizations") as batch:
        batch.drop_column("request")
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_token")
        batch.drop_column("worker_id")

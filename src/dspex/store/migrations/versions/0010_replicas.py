"""Batches driven under a lease, so that service replicas can take over and cancel each other's.

``driver`` and ``driver_expires_at`` on batches: the process running a batch and until when its
lease holds (renewed while it runs); ``cancel_requested_at``: when another process asked for the
batch to be cancelled. Existing batches have no driver.

Revision ID: 0010_replicas
Revises: 0008_optimization_jobs
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010_replicas"
down_revision: str | None = "0008_optimization_jobs"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("driver", sa.String(200), nullable=True))
        batch.add_column(sa.Column("driver_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("cancel_requested_at")
        batch.drop_column("driver_expires_at")
        batch.drop_column("driver")

"""Executions cancellable from any process sharing the database.

``cancel_requested_at`` on executions: when another process asked for a running execution to be
cancelled; the worker holding its lease sees it when it next renews the lease.

Revision ID: 0011_execution_cancel
Revises: 0010_replicas
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0011_execution_cancel"
down_revision: str | None = "0010_replicas"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(
            sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("cancel_requested_at")

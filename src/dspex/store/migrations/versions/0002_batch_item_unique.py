"""Make ``(batch_id, batch_index)`` unique, so feeding a batch's items again is idempotent.

Revision ID: 0002_batch_item_unique
Revises: 0001_initial
Create Date: 2026-11-21
"""

from __future__ import annotations

from alembic import op

revision: str = "0002_batch_item_unique"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_executions_batch", table_name="executions")
    op.create_index("ix_executions_batch", "executions", ["batch_id", "batch_index"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_executions_batch", table_name="executions")
    op.create_index("ix_executions_batch", "executions", ["batch_id", "batch_index"])

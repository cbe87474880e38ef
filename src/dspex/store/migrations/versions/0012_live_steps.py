"""Steps of a running execution recorded while it runs, so any process can follow it.

``live_steps`` and ``live_attempts`` on executions: how many of its steps and attempts (the
first ones of the run, in run order) were recorded before it finished; finishing it writes only
the ones after them.

Revision ID: 0012_live_steps
Revises: 0011_execution_cancel
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012_live_steps"
down_revision: str | None = "0011_execution_cancel"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("live_steps", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("live_attempts", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("live_attempts")
        batch.drop_column("live_steps")

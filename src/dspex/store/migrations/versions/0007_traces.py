"""Record what runs did: each step's inputs and outputs, each LM attempt's messages and response.

``inputs``/``outputs`` on steps and ``messages``/``response`` on attempts, JSON, empty (NULL) on
existing rows and whenever ``[capture]`` leaves them out.

Revision ID: 0007_traces
Revises: 0006_response_cache
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007_traces"
down_revision: str | None = "0006_response_cache"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
_COLUMNS = {"steps": ("inputs", "outputs"), "attempts": ("messages", "response")}


def upgrade() -> None:
    for table, columns in _COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.add_column(sa.Column(column, JSON, nullable=True))


def downgrade() -> None:
    for table, columns in reversed(_COLUMNS.items()):
        with op.batch_alter_table(table) as batch:
            for column in reversed(columns):
                batch.drop_column(column)

"""Create the dspex schema: signatures, programs, batches, executions, steps, attempts, breakers.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the column types: a migration must not change when tables.py does.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NAME = 200


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _count(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default="0")


def upgrade() -> None:
    op.create_table(
        "signatures",
        sa.Column("name", sa.String(NAME), primary_key=True),
        sa.Column("spec", JSON, nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
    )
    op.create_table(
        "programs",
        sa.Column("name", sa.String(NAME), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("spec_hash", sa.String(128), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _count("execution_count"),
        _count("success_count"),
        _count("failure_count"),
        sa.Column("total_duration_ms", sa.Float(), nullable=False, server_default="0"),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(NAME), nullable=False),
        sa.Column("program_version", sa.Integer(), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        _count("completed"),
        _count("failed"),
        _count("cancelled"),
        _ts("created_at", nullable=False),
        _ts("finished_at"),
        sa.ForeignKeyConstraint(
            ["program", "program_version"],
            ["programs.name", "programs.version"],
            name="fk_batches_program",
        ),
    )
    op.create_index("ix_batches_status_created", "batches", ["status", "created_at"])
    op.create_table(
        "executions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(NAME), nullable=False),
        sa.Column("program_version", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(64), nullable=True),
        sa.Column("batch_index", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("inputs", JSON, nullable=False),
        sa.Column("outputs", JSON, nullable=True),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        _count("attempts"),
        _ts("created_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("usage", JSON, nullable=False),
        sa.Column("backend", sa.String(NAME), nullable=True),
        sa.Column("worker_id", sa.String(NAME), nullable=True),
        sa.Column("lease_token", sa.String(64), nullable=True),
        _ts("lease_expires_at"),
        sa.ForeignKeyConstraint(
            ["program", "program_version"],
            ["programs.name", "programs.version"],
            name="fk_executions_program",
        ),
        sa.ForeignKeyConstraint(
            ["batch_id"], ["batches.id"], name="fk_executions_batch", ondelete="SET NULL"
        ),
    )
    op.create_index(
        "ix_executions_program_status_created", "executions", ["program", "status", "created_at"]
    )
    op.create_index("ix_executions_status_lease", "executions", ["status", "lease_expires_at"])
    op.create_index("ix_executions_batch", "executions", ["batch_id", "batch_index"])
    op.create_index("ix_executions_created", "executions", ["created_at", "id"])
    op.create_table(
        "steps",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("module", sa.String(NAME), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        _ts("started_at"),
        _ts("ended_at"),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("usage", JSON, nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name="fk_steps_execution", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_steps_execution", "steps", ["execution_id"])
    op.create_table(
        "attempts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("module", sa.String(NAME), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(NAME), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),
        _ts("started_at"),
        _ts("ended_at"),
        sa.Column("error_code", sa.String(100), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("retry_after", sa.Float(), nullable=True),
        _count("prompt_tokens"),
        _count("completion_tokens"),
        sa.ForeignKeyConstraint(
            ["execution_id"], ["executions.id"], name="fk_attempts_execution", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_attempts_execution", "attempts", ["execution_id"])
    op.create_index("ix_attempts_backend_started", "attempts", ["backend", "started_at"])
    op.create_table(
        "breakers",
        sa.Column("backend", sa.String(NAME), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        _count("failure_count"),
        _count("success_count"),
        _ts("opened_at"),
        _ts("updated_at", nullable=False),
    )


def downgrade() -> None:
    for table in ("breakers", "attempts", "steps", "executions", "batches", "programs"):
        op.drop_table(table)
    op.drop_table("signatures")

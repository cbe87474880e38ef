"""Optimization runs and their trials: ``optimizations`` and ``optimization_trials``.

Revision ID: 0004_optimizations
Revises: 0003_evaluations_promotions
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_optimizations"
down_revision: str | None = "0003_evaluations_promotions"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the column types: a migration must not change when tables.py does.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NAME = 200


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "optimizations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(NAME), nullable=False),
        sa.Column("program_version", sa.Integer(), nullable=False),
        sa.Column("optimizer", sa.String(100), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("metric", sa.String(NAME), nullable=False),
        sa.Column("trainset_hash", sa.String(128), nullable=False),
        sa.Column("trainset_size", sa.Integer(), nullable=False),
        sa.Column("valset_hash", sa.String(128), nullable=True),
        sa.Column("valset_size", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("baseline_score", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("result_version", sa.Integer(), nullable=True),
        sa.Column("stats", JSON, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("finished_at"),
        sa.ForeignKeyConstraint(
            ["program", "program_version"],
            ["programs.name", "programs.version"],
            name="fk_optimizations_program",
        ),
    )
    op.create_index("ix_optimizations_program_created", "optimizations", ["program", "created_at"])
    op.create_index("ix_optimizations_created", "optimizations", ["created_at", "id"])
    op.create_table(
        "optimization_trials",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column(
            "optimization_id",
            sa.String(64),
            sa.ForeignKey("optimizations.id", name="fk_trials_optimization", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("detail", JSON, nullable=False),
    )
    op.create_index(
        "ix_optimization_trials_run", "optimization_trials", ["optimization_id", "number"]
    )


def downgrade() -> None:
    op.drop_index("ix_optimization_trials_run", table_name="optimization_trials")
    op.drop_table("optimization_trials")
    op.drop_index("ix_optimizations_created", table_name="optimizations")
    op.drop_index("ix_optimizations_program_created", table_name="optimizations")
    op.drop_table("optimizations")

"""Evaluations (a batch scored by a metric, with a score per item) and promotions (the history
of each program's current-version pointer).

Revision ID: 0003_evaluations_promotions
Revises: 0002_batch_item_unique
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003_evaluations_promotions"
down_revision: str | None = "0002_batch_item_unique"
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the column types: a migration must not change when tables.py does.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NAME = 200


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("program", sa.String(NAME), nullable=False),
        sa.Column("program_version", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(NAME), nullable=False),
        sa.Column("devset_hash", sa.String(128), nullable=False),
        sa.Column("devset", sa.Text(), nullable=False),
        sa.Column(
            "batch_id",
            sa.String(64),
            sa.ForeignKey("batches.id", name="fk_evaluations_batch", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("failed", sa.Integer(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("finished_at"),
        sa.ForeignKeyConstraint(
            ["program", "program_version"],
            ["programs.name", "programs.version"],
            name="fk_evaluations_program",
        ),
    )
    op.create_index(
        "ix_evaluations_lookup",
        "evaluations",
        ["program", "program_version", "metric", "devset_hash", "status"],
    )
    op.create_index("ix_evaluations_batch", "evaluations", ["batch_id"], unique=True)
    op.create_table(
        "evaluation_items",
        sa.Column(
            "evaluation_id",
            sa.String(64),
            sa.ForeignKey(
                "evaluations.id", name="fk_evaluation_items_evaluation", ondelete="CASCADE"
            ),
            primary_key=True,
        ),
        sa.Column("batch_index", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("execution_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
    )
    op.create_table(
        "promotions",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("program", sa.String(NAME), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("metric", sa.String(NAME), nullable=True),
        sa.Column("devset_hash", sa.String(128), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("previous_score", sa.Float(), nullable=True),
        sa.Column("min_improvement", sa.Float(), nullable=True),
        sa.Column("promoted_by", sa.String(NAME), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["program", "version"],
            ["programs.name", "programs.version"],
            name="fk_promotions_program",
        ),
    )
    op.create_index("ix_promotions_program", "promotions", ["program", "id"])


def downgrade() -> None:
    op.drop_index("ix_promotions_program", table_name="promotions")
    op.drop_table("promotions")
    op.drop_table("evaluation_items")
    op.drop_index("ix_evaluations_batch", table_name="evaluations")
    op.drop_index("ix_evaluations_lookup", table_name="evaluations")
    op.drop_table("evaluations")

"""SQLAlchemy Core tables of the dspex schema (portable across SQLite and PostgreSQL).

The schema is created by the Alembic migrations in :mod:`dspex.store.migrations`; these table
objects describe it for queries, and a test checks that the two never disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

__all__ = [
    "JSON",
    "UTCDateTime",
    "attempts",
    "batches",
    "breakers",
    "evaluation_items",
    "evaluations",
    "executions",
    "metadata",
    "optimization_trials",
    "optimizations",
    "programs",
    "promotions",
    "response_cache",
    "signatures",
    "steps",
]


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every database.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    (which also keeps its text comparison in time order) and come back tagged as UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSON: sa.types.TypeEngine[Any] = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a BIGINT one.
BIG_ID: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

NAME = 200
metadata = sa.MetaData()

signatures = sa.Table(
    "signatures",
    metadata,
    sa.Column("name", sa.String(NAME), primary_key=True),
    sa.Column("spec", JSON, nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

programs = sa.Table(
    "programs",
    metadata,
    sa.Column("name", sa.String(NAME), primary_key=True),
    sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("spec", JSON, nullable=False),
    sa.Column("spec_hash", sa.String(128), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("execution_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("success_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failure_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("total_duration_ms", sa.Float(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("program", sa.String(NAME), nullable=False),
    sa.Column("program_version", sa.Integer(), nullable=False),
    sa.Column("config", JSON, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("total", sa.Integer(), nullable=False),
    sa.Column("completed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("cancelled", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
    sa.Column("rate_limited_s", sa.Float(), nullable=False, server_default="0"),
    sa.Column("driver", sa.String(200), nullable=True),
    sa.Column("driver_expires_at", UTCDateTime(), nullable=True),
    sa.Column("cancel_requested_at", UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(
        ["program", "program_version"],
        ["programs.name", "programs.version"],
        name="fk_batches_program",
    ),
    sa.Index("ix_batches_status_created", "status", "created_at"),
)

executions = sa.Table(
    "executions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("program", sa.String(NAME), nullable=False),
    sa.Column("program_version", sa.Integer(), nullable=False),
    sa.Column(
        "batch_id",
        sa.String(64),
        sa.ForeignKey("batches.id", name="fk_executions_batch", ondelete="SET NULL"),
        nullable=True,
    ),
    sa.Column("batch_index", sa.Integer(), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("inputs", JSON, nullable=False),
    sa.Column("outputs", JSON, nullable=True),
    sa.Column("error_code", sa.String(100), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("duration_ms", sa.Float(), nullable=True),
    sa.Column("usage", JSON, nullable=False),
    sa.Column("backend", sa.String(NAME), nullable=True),
    sa.Column("worker_id", sa.String(NAME), nullable=True),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
    sa.Column("cancel_requested_at", UTCDateTime(), nullable=True),
    sa.Column("live_steps", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("live_attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(
        ["program", "program_version"],
        ["programs.name", "programs.version"],
        name="fk_executions_program",
    ),
    sa.Index("ix_executions_program_status_created", "program", "status", "created_at"),
    sa.Index("ix_executions_status_lease", "status", "lease_expires_at"),
    sa.Index("ix_executions_batch", "batch_id", "batch_index", unique=True),
    sa.Index("ix_executions_created", "created_at", "id"),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column(
        "execution_id",
        sa.String(64),
        sa.ForeignKey("executions.id", name="fk_steps_execution", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("module", sa.String(NAME), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("duration_ms", sa.Float(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("error_code", sa.String(100), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("usage", JSON, nullable=False),
    sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
    sa.Column("cache_hit", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("cost_saved_usd", sa.Float(), nullable=False, server_default="0"),
    sa.Column("inputs", JSON, nullable=True),
    sa.Column("outputs", JSON, nullable=True),
    sa.Index("ix_steps_execution", "execution_id"),
)

attempts = sa.Table(
    "attempts",
    metadata,
    sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
    sa.Column(
        "execution_id",
        sa.String(64),
        sa.ForeignKey("executions.id", name="fk_attempts_execution", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("module", sa.String(NAME), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("backend", sa.String(NAME), nullable=False),
    sa.Column("outcome", sa.String(20), nullable=False),
    sa.Column("started_at", UTCDateTime(), nullable=True),
    sa.Column("ended_at", UTCDateTime(), nullable=True),
    sa.Column("error_code", sa.String(100), nullable=True),
    sa.Column("http_status", sa.Integer(), nullable=True),
    sa.Column("retry_after", sa.Float(), nullable=True),
    sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
    sa.Column("messages", JSON, nullable=True),
    sa.Column("response", JSON, nullable=True),
    sa.Index("ix_attempts_execution", "execution_id"),
    sa.Index("ix_attempts_backend_started", "backend", "started_at"),
)

breakers = sa.Table(
    "breakers",
    metadata,
    sa.Column("backend", sa.String(NAME), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("failure_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("success_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("opened_at", UTCDateTime(), nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

evaluations = sa.Table(
    "evaluations",
    metadata,
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
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(
        ["program", "program_version"],
        ["programs.name", "programs.version"],
        name="fk_evaluations_program",
    ),
    sa.Index(
        "ix_evaluations_lookup", "program", "program_version", "metric", "devset_hash", "status"
    ),
    sa.Index("ix_evaluations_batch", "batch_id", unique=True),
)

evaluation_items = sa.Table(
    "evaluation_items",
    metadata,
    sa.Column(
        "evaluation_id",
        sa.String(64),
        sa.ForeignKey("evaluations.id", name="fk_evaluation_items_evaluation", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("batch_index", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("execution_id", sa.String(64), nullable=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("score", sa.Float(), nullable=False),
)

promotions = sa.Table(
    "promotions",
    metadata,
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
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(
        ["program", "version"],
        ["programs.name", "programs.version"],
        name="fk_promotions_program",
    ),
    sa.Index("ix_promotions_program", "program", "id"),
)

optimizations = sa.Table(
    "optimizations",
    metadata,
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
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime(), nullable=True),
    sa.Column("worker_id", sa.String(200), nullable=True),
    sa.Column("lease_token", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"),
    sa.Column("request", JSON, nullable=True),
    sa.ForeignKeyConstraint(
        ["program", "program_version"],
        ["programs.name", "programs.version"],
        name="fk_optimizations_program",
    ),
    sa.Index("ix_optimizations_program_created", "program", "created_at"),
    sa.Index("ix_optimizations_created", "created_at", "id"),
)

optimization_trials = sa.Table(
    "optimization_trials",
    metadata,
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
    sa.Index("ix_optimization_trials_run", "optimization_id", "number"),
)

# The response cache: one validated LM response per exact request (``key``, a sha256 hex of the
# backend's identity, the prompt's parts and the call's parameters), shared by every process on
# the database. ``program``/``module``/``backend``/``model`` say where it came from (for stats and
# ``dspex cache clear --program``); ``response`` is the outputs, extras and usage as JSON.
response_cache = sa.Table(
    "response_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("program", sa.String(NAME), nullable=False),
    sa.Column("module", sa.String(NAME), nullable=False),
    sa.Column("backend", sa.String(NAME), nullable=False),
    sa.Column("model", sa.String(NAME), nullable=False),
    sa.Column("response", JSON, nullable=False),
    sa.Column("size_bytes", sa.Integer(), nullable=False),
    sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
    sa.Column("hits", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("last_hit_at", UTCDateTime(), nullable=True),
    sa.Index("ix_response_cache_program", "program"),
    sa.Index("ix_response_cache_expires", "expires_at"),
)

"""The in-memory store's data: one dictionary per table, and the integrity rules a schema keeps.

Every noun of :class:`~dspex.store.memory.MemoryStore` works on one shared
:class:`MemoryTables`. What the SQL schema enforces by itself (foreign keys, the unique
``(batch_id, batch_index)`` index, generated step and attempt ids, ``SET n = n + 1`` counters)
is written here once, so no noun's twin has its own copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from dspex.errors import NotFoundError, StorageError
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    BreakerRecord,
    EvaluationRecord,
    ExecutionRecord,
    ExecutionStatus,
    ItemScore,
    OptimizationRecord,
    OptimizationTrial,
    ProgramRecord,
    PromotionRecord,
    StepRecord,
)
from dspex.store._rules import json_copy

__all__ = ["MemoryTables"]


@dataclass
class MemoryTables:
    """The rows of every table, kept in dictionaries (lost when the process ends)."""

    programs: dict[str, list[ProgramRecord]] = field(default_factory=dict)
    executions: dict[str, ExecutionRecord] = field(default_factory=dict)
    steps: dict[str, list[StepRecord]] = field(default_factory=dict)
    attempts: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    batches: dict[str, BatchRecord] = field(default_factory=dict)
    breakers: dict[str, BreakerRecord] = field(default_factory=dict)
    # (batch_id, batch_index) → execution id: the unique index the SQL schema has.
    batch_items: dict[tuple[str, int], str] = field(default_factory=dict)
    evaluations: dict[str, EvaluationRecord] = field(default_factory=dict)
    evaluation_items: dict[str, dict[int, ItemScore]] = field(default_factory=dict)
    promotions: dict[str, list[PromotionRecord]] = field(default_factory=dict)
    optimizations: dict[str, OptimizationRecord] = field(default_factory=dict)
    optimization_trials: dict[str, list[OptimizationTrial]] = field(default_factory=dict)
    optimization_requests: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    closed: bool = False
    _last_id: int = 0

    def check_open(self) -> None:
        if self.closed:
            raise StorageError("the store is closed")

    # -- programs ------------------------------------------------------------------------------

    def program(self, name: str, version: int | None) -> ProgramRecord:
        """One version (the newest when ``version`` is ``None``), or :class:`NotFoundError`."""
        versions = self.programs.get(name)
        if not versions:
            raise NotFoundError(f"program {name!r} does not exist")
        if version is None:
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise NotFoundError(f"program {name!r} has no version {version}")
        return versions[version - 1]

    def current_version(self, name: str) -> int | None:
        """The version last promoted, if any."""
        history = self.promotions.get(name)
        return history[-1].version if history else None

    def default_program(self, name: str) -> ProgramRecord:
        """The version used when none is named: the current one, else the newest."""
        return self.program(name, self.current_version(name))

    def evaluation(self, evaluation_id: str) -> EvaluationRecord:
        try:
            return self.evaluations[evaluation_id]
        except KeyError:
            raise NotFoundError(f"evaluation {evaluation_id!r} does not exist") from None

    def next_id(self) -> int:
        """A new id for a generated key (steps, attempts, promotions)."""
        return self._next()

    def replace_program(self, record: ProgramRecord) -> None:
        self.programs[record.name][record.version - 1] = record

    def count_execution(
        self,
        name: str,
        version: int,
        status: ExecutionStatus,
        duration_ms: float | None,
    ) -> None:
        """Count one completed or failed execution on its program version."""
        current = self.program(name, version)
        succeeded = status is ExecutionStatus.COMPLETED
        self.replace_program(
            replace(
                current,
                execution_count=current.execution_count + 1,
                success_count=current.success_count + int(succeeded),
                failure_count=current.failure_count + int(not succeeded),
                total_duration_ms=current.total_duration_ms + (duration_ms or 0.0),
            )
        )

    # -- executions ----------------------------------------------------------------------------

    def check_refs(
        self,
        program: str,
        version: int,
        batch_id: str | None,
        eid: str,
        batch_index: int | None = None,
    ) -> None:
        """The foreign keys and unique keys an execution insert must satisfy."""
        self.program(program, version)
        if batch_id is not None and batch_id not in self.batches:
            raise NotFoundError(f"batch {batch_id!r} does not exist")
        if eid in self.executions:
            raise StorageError(f"execution {eid!r} already exists")
        if batch_id is not None and (batch_id, batch_index) in self.batch_items:
            raise StorageError(f"batch {batch_id!r} already has an item {batch_index}")

    def insert_execution(self, record: ExecutionRecord) -> None:
        self.executions[record.id] = record
        if record.batch_id is not None and record.batch_index is not None:
            self.batch_items[(record.batch_id, record.batch_index)] = record.id

    def execution(self, execution_id: str) -> ExecutionRecord:
        try:
            return self.executions[execution_id]
        except KeyError:
            raise NotFoundError(f"execution {execution_id!r} does not exist") from None

    def prepare_steps(self, eid: str, steps: Iterable[StepRecord]) -> list[StepRecord]:
        """Steps as the database returns them: JSON round trip, execution id, a new id."""
        return [
            replace(s, usage=json_copy(s.usage, "step usage"), execution_id=eid, id=self._next())
            for s in steps
        ]

    def prepare_attempts(self, eid: str, attempts: Iterable[AttemptRecord]) -> list[AttemptRecord]:
        return [replace(a, execution_id=eid, id=self._next()) for a in attempts]

    def add_children(
        self, eid: str, steps: Iterable[StepRecord], attempts: Iterable[AttemptRecord]
    ) -> None:
        """Append prepared steps and attempts to an execution."""
        self.steps.setdefault(eid, []).extend(steps)
        self.attempts.setdefault(eid, []).extend(attempts)

    def _next(self) -> int:
        self._last_id += 1
        return self._last_id

    # -- batches -------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> BatchRecord:
        try:
            return self.batches[batch_id]
        except KeyError:
            raise NotFoundError(f"batch {batch_id!r} does not exist") from None

    def add_batch_spend(self, batch_id: str, cost_usd: float, rate_limited_ms: float) -> None:
        """Add a finished run's cost and rate-limit waits to its batch."""
        if cost_usd or rate_limited_ms:
            batch = self.batches[batch_id]
            self.batches[batch_id] = replace(
                batch,
                cost_usd=batch.cost_usd + cost_usd,
                rate_limited_s=batch.rate_limited_s + rate_limited_ms / 1000.0,
            )

    def count_in_batch(self, batch_id: str, status: ExecutionStatus, n: int = 1) -> None:
        """Add ``n`` (negative: take away) to the batch's count of ``status``."""
        batch = self.batches[batch_id]
        self.batches[batch_id] = replace(
            batch,
            completed=batch.completed + n * int(status is ExecutionStatus.COMPLETED),
            failed=batch.failed + n * int(status is ExecutionStatus.FAILED),
            cancelled=batch.cancelled + n * int(status is ExecutionStatus.CANCELLED),
        )

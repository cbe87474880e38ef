"""Optimization runs in memory (the twin of :mod:`dspex.store._sql_optimizations`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from dspex.errors import NotFoundError, StorageError
from dspex.records import OptimizationRecord, OptimizationStatus, OptimizationTrial, new_id
from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import check_finishing, check_positive, json_copy
from dspex.store.base import Clock
from dspex.store.optimizations import NewOptimization, OptimizationStore

__all__ = ["MemoryOptimizations"]


class MemoryOptimizations(OptimizationStore):
    """:class:`~dspex.store.optimizations.OptimizationStore` over :class:`MemoryTables` (a
    mixin of :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    async def create_optimization(self, new: NewOptimization) -> OptimizationRecord:
        self._db.check_open()
        self._db.program(new.program, new.program_version)
        record = OptimizationRecord(
            id=new_id(),
            program=new.program,
            program_version=new.program_version,
            optimizer=new.optimizer,
            settings=json_copy(new.settings, "optimizer settings"),
            metric=new.metric,
            trainset_hash=new.trainset_hash,
            trainset_size=new.trainset_size,
            valset_hash=new.valset_hash,
            valset_size=new.valset_size,
            seed=new.seed,
            status=OptimizationStatus.RUNNING,
            baseline_score=None,
            score=None,
            result_version=None,
            stats={},
            error=None,
            created_at=self.clock(),
            finished_at=None,
        )
        self._db.optimizations[record.id] = record
        self._db.optimization_trials[record.id] = []
        return record

    def _optimization(self, optimization_id: str) -> OptimizationRecord:
        try:
            return self._db.optimizations[optimization_id]
        except KeyError:
            raise NotFoundError(f"optimization {optimization_id!r} does not exist") from None

    async def add_optimization_trials(
        self, optimization_id: str, trials: Sequence[OptimizationTrial]
    ) -> None:
        self._db.check_open()
        self._optimization(optimization_id)
        stored = [replace(t, detail=json_copy(t.detail, "trial detail")) for t in trials]
        self._db.optimization_trials[optimization_id].extend(stored)

    async def finish_optimization(
        self,
        optimization_id: str,
        *,
        status: OptimizationStatus,
        baseline_score: float | None = None,
        score: float | None = None,
        result_version: int | None = None,
        stats: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> OptimizationRecord:
        self._db.check_open()
        check_finishing(status)
        current = self._optimization(optimization_id)
        if current.status.is_terminal:
            raise StorageError(
                f"optimization {optimization_id!r} already finished ({current.status.value})"
            )
        record = replace(
            current,
            status=status,
            baseline_score=baseline_score,
            score=score,
            result_version=result_version,
            stats=json_copy(stats or {}, "optimization stats"),
            error=error,
            finished_at=self.clock(),
        )
        self._db.optimizations[optimization_id] = record
        return record

    async def get_optimization(self, optimization_id: str) -> OptimizationRecord:
        self._db.check_open()
        record = self._optimization(optimization_id)
        trials = sorted(self._db.optimization_trials[optimization_id], key=lambda t: t.number)
        return replace(record, trials=tuple(trials))

    async def list_optimizations(
        self, *, program: str | None = None, limit: int = 50
    ) -> list[OptimizationRecord]:
        self._db.check_open()
        check_positive("limit", limit)
        records = [
            r for r in self._db.optimizations.values() if program is None or r.program == program
        ]
        records.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return records[:limit]

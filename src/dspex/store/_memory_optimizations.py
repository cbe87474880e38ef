"""Optimization runs in memory (the twin of :mod:`dspex.store._sql_optimizations`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from dspex.errors import LeaseLostError, NotFoundError, StorageError
from dspex.records import (
    OptimizationRecord,
    OptimizationStatus,
    OptimizationTrial,
    new_id,
    new_token,
)
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
        if new.lease_seconds is not None:
            check_positive("lease_seconds", new.lease_seconds)
        self._db.program(new.program, new.program_version)
        request = json_copy(new.request, "optimization request") if new.request else None
        now = self.clock()
        leased = new.worker_id is not None and new.lease_seconds is not None
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
            created_at=now,
            finished_at=None,
            worker_id=new.worker_id,
            lease_token=new_token() if leased else None,
            lease_expires_at=now + timedelta(seconds=new.lease_seconds or 0) if leased else None,
        )
        self._db.optimizations[record.id] = record
        self._db.optimization_trials[record.id] = []
        self._db.optimization_requests[record.id] = request
        return record

    def _optimization(self, optimization_id: str) -> OptimizationRecord:
        try:
            return self._db.optimizations[optimization_id]
        except KeyError:
            raise NotFoundError(f"optimization {optimization_id!r} does not exist") from None

    async def get_optimization_request(self, optimization_id: str) -> dict[str, Any] | None:
        self._db.check_open()
        self._optimization(optimization_id)
        request = self._db.optimization_requests.get(optimization_id)
        return json_copy(request, "optimization request") if request is not None else None

    async def heartbeat_optimization(
        self, optimization_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        self._db.check_open()
        check_positive("lease_seconds", lease_seconds)
        current = self._db.optimizations.get(optimization_id)
        if (
            current is None
            or current.status is not OptimizationStatus.RUNNING
            or current.lease_token != lease_token
        ):
            return False
        expires = self.clock() + timedelta(seconds=lease_seconds)
        self._db.optimizations[optimization_id] = replace(current, lease_expires_at=expires)
        return True

    async def claim_optimization(
        self, optimization_id: str, *, worker_id: str, lease_seconds: float
    ) -> OptimizationRecord | None:
        self._db.check_open()
        check_positive("lease_seconds", lease_seconds)
        current = self._optimization(optimization_id)
        now = self.clock()
        expired = (
            current.status is OptimizationStatus.RUNNING
            and current.lease_expires_at is not None
            and current.lease_expires_at < now
        )
        if not (current.status.is_resumable or expired):
            return None
        record = replace(
            current,
            status=OptimizationStatus.RUNNING,
            error=None,
            finished_at=None,
            worker_id=worker_id,
            lease_token=new_token(),
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=current.attempts + 1,
        )
        self._db.optimizations[optimization_id] = record
        return record

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
        lease_token: str | None = None,
    ) -> OptimizationRecord:
        self._db.check_open()
        check_finishing(status)
        current = self._optimization(optimization_id)
        if current.status.is_terminal:
            raise StorageError(
                f"optimization {optimization_id!r} already finished ({current.status.value})"
            )
        if lease_token is not None and current.lease_token != lease_token:
            raise LeaseLostError(
                f"optimization {optimization_id!r} is no longer held by this lease"
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
            lease_token=None,
            lease_expires_at=None,
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

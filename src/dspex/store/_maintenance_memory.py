"""Health and cleanup for the in-memory store (the twin of :mod:`dspex.store._maintenance_sql`).

A mixin of :class:`~dspex.store.memory.MemoryStore`: it works on the store's dictionaries. Every
method runs without awaiting, so on one event loop each call is atomic, as each SQL call is one
locked transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from dspex.errors import StorageError
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    ProgramRecord,
    ProgramStatus,
    StepRecord,
)
from dspex.store import _maintenance as _m
from dspex.store.base import Store, check_positive

__all__ = ["MemoryMaintenance"]

_TABLES = ("signatures", "programs", "batches", "executions", "steps", "attempts", "breakers")


class MemoryMaintenance(Store):
    """The maintenance half of :class:`~dspex.store.memory.MemoryStore`."""

    # Owned and initialised by MemoryStore; declared here for the type checker.
    _programs: dict[str, list[ProgramRecord]]
    _executions: dict[str, ExecutionRecord]
    _steps: dict[str, list[StepRecord]]
    _attempts: dict[str, list[AttemptRecord]]
    _batches: dict[str, BatchRecord]
    _batch_items: dict[tuple[str, int], str]
    _closed: bool

    def _ensure_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    async def probe_tables(self) -> dict[str, str | None]:
        self._ensure_open()
        return dict.fromkeys(_TABLES)

    async def open_executions(self, now: datetime | None = None) -> _m.OpenExecutions:
        self._ensure_open()
        cutoff = now or self.clock()
        pending = running = expired = 0
        for record in self._executions.values():
            if record.status is ExecutionStatus.PENDING:
                pending += 1
            elif record.status is ExecutionStatus.RUNNING:
                running += 1
                if record.lease_expires_at is not None and record.lease_expires_at < cutoff:
                    expired += 1
        return _m.OpenExecutions(pending=pending, running=running, expired=expired)

    async def execution_summaries(
        self, since: datetime, *, limit: int = 50_000
    ) -> list[_m.ExecutionSample]:
        self._ensure_open()
        check_positive("limit", limit)
        recent = [r for r in self._executions.values() if r.created_at >= since]
        recent.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [
            _m.ExecutionSample(
                id=r.id,
                program=r.program,
                program_version=r.program_version,
                status=r.status,
                error_code=r.error_code,
                error_message=r.error_message,
                created_at=r.created_at,
                finished_at=r.finished_at,
                duration_ms=r.duration_ms,
            )
            for r in recent[:limit]
        ]

    async def reap_expired_leases(
        self,
        now: datetime | None = None,
        *,
        attempt_cap: int = 3,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> _m.ReapResult:
        self._ensure_open()
        check_positive("attempt_cap", attempt_cap)
        check_positive("limit", limit)
        cutoff = now or self.clock()
        expired = [
            r
            for r in self._executions.values()
            if r.status is ExecutionStatus.RUNNING
            and r.lease_expires_at is not None
            and r.lease_expires_at < cutoff
        ]
        expired.sort(key=lambda r: (r.lease_expires_at or cutoff, r.id))
        if not dry_run:
            expired = expired[:limit]
        result = _m.ReapResult()
        for record in expired:
            if _m.reap_decision(record.attempts, record.batch_id, attempt_cap):
                result.requeued.append(record.id)
                if not dry_run:
                    self._executions[record.id] = replace(
                        record,
                        status=ExecutionStatus.PENDING,
                        worker_id=None,
                        lease_token=None,
                        lease_expires_at=None,
                    )
                continue
            result.failed.append(record.id)
            result.count_failed(record.batch_id)
            if not dry_run:
                self._fail_expired(record, cutoff, attempt_cap)
        return result

    def _fail_expired(self, record: ExecutionRecord, now: datetime, attempt_cap: int) -> None:
        self._executions[record.id] = replace(
            record,
            status=ExecutionStatus.FAILED,
            error_code=_m.LEASE_EXPIRED,
            error_message=_m.reap_message(
                batch_item=record.batch_id is not None, attempt_cap=attempt_cap
            ),
            finished_at=now,
            lease_token=None,
            lease_expires_at=None,
        )
        versions = self._programs.get(record.program, [])
        if 1 <= record.program_version <= len(versions):
            program = versions[record.program_version - 1]
            versions[record.program_version - 1] = replace(
                program,
                execution_count=program.execution_count + 1,
                failure_count=program.failure_count + 1,
            )
        batch = self._batches.get(record.batch_id or "")
        if batch is not None:
            self._batches[batch.id] = replace(batch, failed=batch.failed + 1)

    async def finalize_batches(
        self,
        *,
        dry_run: bool = False,
        limit: int = 1000,
        assume_failed: Mapping[str, int] | None = None,
    ) -> list[_m.BatchFinalization]:
        self._ensure_open()
        check_positive("limit", limit)
        open_batches = {b.id: b for b in self._batches.values() if b.status.value in _m.OPEN_BATCH}
        statuses: dict[str, list[str]] = {bid: [] for bid in open_batches}
        for record in self._executions.values():
            if record.batch_id in statuses:
                statuses[record.batch_id].append(record.status.value)
        done: list[_m.BatchFinalization] = []
        for bid in sorted(open_batches, key=lambda b: (open_batches[b].created_at, b)):
            batch = open_batches[bid]
            counts = _m.assume(_m.count_statuses(statuses[bid]), (assume_failed or {}).get(bid, 0))
            if sum(counts.values()) < batch.total or any(_m.is_open(s) for s in counts):
                continue
            final = _m.finalization(bid, counts)
            done.append(final)
            if not dry_run:
                self._batches[bid] = replace(
                    batch,
                    status=final.status,
                    completed=final.completed,
                    failed=final.failed,
                    cancelled=final.cancelled,
                    finished_at=self.clock(),
                )
            if len(done) >= limit:
                break
        return done

    async def fail_stuck_programs(
        self, updated_before: datetime, *, dry_run: bool = False
    ) -> list[tuple[str, int]]:
        self._ensure_open()
        stuck: list[tuple[str, int]] = []
        for name in sorted(self._programs):
            versions = self._programs[name]
            for index, record in enumerate(versions):
                if record.status is not ProgramStatus.INITIALIZING:
                    continue
                if record.updated_at >= updated_before:
                    continue
                stuck.append((name, record.version))
                if not dry_run:
                    versions[index] = replace(
                        record,
                        status=ProgramStatus.ERROR,
                        error=_m.stuck_message(record.updated_at),
                        updated_at=self.clock(),
                    )
        return stuck

    async def delete_executions(
        self,
        created_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        self._ensure_open()
        check_positive("limit", limit)
        old = [
            r
            for r in self._executions.values()
            if r.status.is_terminal
            and r.created_at < created_before
            and (r.finished_at or r.created_at) < created_before
        ]
        old.sort(key=lambda r: (r.created_at, r.id))
        if dry_run:
            return len(old), [r.id for r in old[:sample]]
        chosen = old[:limit]
        for record in chosen:
            del self._executions[record.id]
            self._steps.pop(record.id, None)
            self._attempts.pop(record.id, None)
            if record.batch_id is not None and record.batch_index is not None:
                self._batch_items.pop((record.batch_id, record.batch_index), None)
        return len(chosen), [r.id for r in chosen[:sample]]

"""Health and cleanup in memory (the twin of :mod:`dspex.store._sql_maintenance`).

Every method runs without awaiting, so on one event loop each call is atomic, as each SQL call is
one locked transaction.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from datetime import datetime

from dspex.records import BatchStatus, ExecutionRecord, ExecutionStatus, ProgramStatus
from dspex.store import _maintenance as _m
from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import check_positive
from dspex.store.base import Clock
from dspex.store.maintenance import MaintenanceStore

__all__ = ["MemoryMaintenance"]

_TABLES = ("signatures", "programs", "batches", "executions", "steps", "attempts", "breakers")
MEMORY_REVISION = "memory"


class MemoryMaintenance(MaintenanceStore):
    """:class:`~dspex.store.maintenance.MaintenanceStore` over :class:`MemoryTables` (a mixin of
    :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    # -- health --------------------------------------------------------------------------------

    async def ping(self) -> float:
        self._db.check_open()
        start = time.perf_counter()
        return (time.perf_counter() - start) * 1000.0

    async def schema_revision(self) -> str | None:
        self._db.check_open()
        return MEMORY_REVISION

    async def is_current(self) -> bool:
        self._db.check_open()
        return True

    async def probe_tables(self) -> dict[str, str | None]:
        self._db.check_open()
        return dict.fromkeys(_TABLES)

    async def open_executions(self, now: datetime | None = None) -> _m.OpenExecutions:
        self._db.check_open()
        cutoff = now or self.clock()
        pending = running = expired = 0
        for record in self._db.executions.values():
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
        self._db.check_open()
        check_positive("limit", limit)
        recent = [r for r in self._db.executions.values() if r.created_at >= since]
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
        self._db.check_open()
        check_positive("attempt_cap", attempt_cap)
        check_positive("limit", limit)
        cutoff = now or self.clock()
        expired = [
            r
            for r in self._db.executions.values()
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
                    self._db.executions[record.id] = replace(
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
        self._db.executions[record.id] = replace(
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
        if record.program in self._db.programs:
            self._db.count_execution(
                record.program, record.program_version, ExecutionStatus.FAILED, None
            )
        if record.batch_id in self._db.batches:
            self._db.count_in_batch(record.batch_id, ExecutionStatus.FAILED)

    async def finalize_batches(
        self,
        *,
        dry_run: bool = False,
        limit: int = 1000,
        assume_failed: Mapping[str, int] | None = None,
    ) -> list[_m.BatchFinalization]:
        self._db.check_open()
        check_positive("limit", limit)
        open_batches = {
            b.id: b for b in self._db.batches.values() if b.status.value in _m.OPEN_BATCH
        }
        statuses: dict[str, list[str]] = {bid: [] for bid in open_batches}
        for record in self._db.executions.values():
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
                self._db.batches[bid] = replace(
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
        self._db.check_open()
        stuck: list[tuple[str, int]] = []
        for name in sorted(self._db.programs):
            versions = self._db.programs[name]
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
        self._db.check_open()
        check_positive("limit", limit)
        old = [
            r
            for r in self._db.executions.values()
            if r.status.is_terminal
            and r.created_at < created_before
            and (r.finished_at or r.created_at) < created_before
        ]
        old.sort(key=lambda r: (r.created_at, r.id))
        if dry_run:
            return len(old), [r.id for r in old[:sample]]
        chosen = old[:limit]
        for record in chosen:
            del self._db.executions[record.id]
            self._db.steps.pop(record.id, None)
            self._db.attempts.pop(record.id, None)
            if record.batch_id is not None and record.batch_index is not None:
                self._db.batch_items.pop((record.batch_id, record.batch_index), None)
        return len(chosen), [r.id for r in chosen[:sample]]

    async def stalled_batches(
        self, idle_since: datetime, *, now: datetime | None = None, fail: bool = False
    ) -> list[_m.StalledBatch]:
        self._db.check_open()
        moment = now or self.clock()
        items: dict[str, list[ExecutionRecord]] = {}
        for record in self._db.executions.values():
            if record.batch_id is not None:
                items.setdefault(record.batch_id, []).append(record)
        stalled: list[_m.StalledBatch] = []
        for batch in sorted(self._db.batches.values(), key=lambda b: (b.created_at, b.id)):
            if batch.status.value not in _m.OPEN_BATCH:
                continue
            mine = items.get(batch.id, [])
            live = any(
                r.status is ExecutionStatus.RUNNING
                and r.lease_expires_at is not None
                and r.lease_expires_at >= moment
                for r in mine
            ) or (batch.driver_expires_at is not None and batch.driver_expires_at >= moment)
            unfinished = sum(1 for r in mine if not r.status.is_terminal)
            missing = max(batch.total - len(mine), 0)
            times = [t for r in mine for t in (r.created_at, r.started_at, r.finished_at) if t]
            last = max([batch.created_at, *times])
            if live or not (unfinished or missing) or last >= idle_since:
                continue
            stalled.append(
                _m.StalledBatch(
                    batch.id,
                    batch.program,
                    _m.input_path(batch.config),
                    unfinished,
                    missing,
                    last,
                )
            )
            if fail:
                final = _m.finalization(batch.id, _m.count_statuses(r.status.value for r in mine))
                self._db.batches[batch.id] = replace(
                    batch,
                    status=BatchStatus.FAILED,
                    completed=final.completed,
                    failed=final.failed,
                    cancelled=final.cancelled,
                    finished_at=self.clock(),
                )
        return stalled

    async def delete_batches(
        self,
        finished_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        self._db.check_open()
        check_positive("limit", limit)
        old = sorted(
            (
                b
                for b in self._db.batches.values()
                if b.status.is_terminal
                and b.created_at < finished_before
                and (b.finished_at or b.created_at) < finished_before
            ),
            key=lambda b: (b.created_at, b.id),
        )
        if dry_run:
            return len(old), [b.id for b in old[:sample]]
        chosen = {b.id for b in old[:limit]}
        for record in [r for r in self._db.executions.values() if r.batch_id in chosen]:
            del self._db.executions[record.id]
            self._db.steps.pop(record.id, None)
            self._db.attempts.pop(record.id, None)
        for key in [k for k in self._db.batch_items if k[0] in chosen]:
            del self._db.batch_items[key]
        for batch_id in chosen:
            del self._db.batches[batch_id]
        ids = [b.id for b in old[:limit]]
        return len(ids), ids[:sample]

    async def delete_breakers(self, keep: Collection[str], *, dry_run: bool = False) -> list[str]:
        self._db.check_open()
        gone = sorted(name for name in self._db.breakers if name not in keep)
        if not dry_run:
            for name in gone:
                del self._db.breakers[name]
        return gone

    async def reclaim_space(self, *, vacuum: bool = False) -> _m.SpaceReport | None:
        self._db.check_open()
        return None  # nothing to give back: the tables are Python objects

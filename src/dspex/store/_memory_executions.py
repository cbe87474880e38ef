"""Executions, leases, steps and attempts in memory (the twin of
:mod:`dspex.store._sql_executions`).

Every method runs without awaiting anything, so on one event loop each call is atomic, just as
each SQL call is one transaction. Payloads go through a JSON round trip on the way in, so callers
see exactly what a database would give back (and get the same error for unserialisable values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from dspex.errors import ExecutionCancelledError, LeaseLostError
from dspex.records import (
    AttemptRecord,
    ExecutionFilter,
    ExecutionRecord,
    ExecutionRecordPage,
    ExecutionStatus,
    StepRecord,
    UsageMap,
    new_id,
    new_token,
)
from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import (
    CANCELLED_CODE,
    CANCELLED_MESSAGE,
    check_positive,
    check_startable,
    check_terminal,
    counts_toward_program,
    decode_cursor,
    encode_cursor,
    json_copy,
)
from dspex.store.base import Clock
from dspex.store.executions import ExecutionStore

__all__ = ["MemoryExecutions"]


class MemoryExecutions(ExecutionStore):
    """:class:`~dspex.store.executions.ExecutionStore` over :class:`MemoryTables` (a mixin of
    :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    async def start_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        *,
        worker_id: str,
        lease_seconds: float,
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
        require_ready: bool = False,
        require_latest: bool = False,
    ) -> ExecutionRecord:
        db = self._db
        db.check_open()
        check_positive("lease_seconds", lease_seconds)
        eid = execution_id or new_id()
        db.check_refs(program, program_version, batch_id, eid, batch_index)
        if require_ready or require_latest:
            check_startable(
                db.program(program, program_version),
                db.default_program(program) if require_latest else None,
                require_ready=require_ready,
            )
        record = ExecutionRecord.started(
            eid,
            program,
            program_version,
            json_copy(inputs, "inputs"),
            self.clock(),
            worker_id=worker_id,
            lease_token=new_token(),
            lease_seconds=lease_seconds,
            batch_id=batch_id,
            batch_index=batch_index,
        )
        db.insert_execution(record)
        return record

    def _held(self, execution_id: str, lease_token: str) -> ExecutionRecord:
        record = self._db.execution(execution_id)
        if record.status is not ExecutionStatus.RUNNING or record.lease_token != lease_token:
            raise LeaseLostError(f"execution {execution_id!r} is no longer held by this lease")
        return record

    async def heartbeat(
        self, execution_id: str, lease_token: str, lease_seconds: float
    ) -> datetime:
        self._db.check_open()
        check_positive("lease_seconds", lease_seconds)
        record = self._held(execution_id, lease_token)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        self._db.executions[execution_id] = replace(record, lease_expires_at=expires)
        if record.cancel_requested_at is not None:
            raise ExecutionCancelledError(f"execution {execution_id!r} was asked to cancel")
        return expires

    async def request_execution_cancel(self, execution_id: str) -> ExecutionRecord:
        db = self._db
        db.check_open()
        record = db.execution(execution_id)
        if record.status.is_terminal:
            return record
        now = self.clock()
        live = record.lease_expires_at is not None and record.lease_expires_at > now
        if live and record.status is ExecutionStatus.RUNNING:
            record = replace(record, cancel_requested_at=now)
        else:
            record = replace(
                record,
                status=ExecutionStatus.CANCELLED,
                error_code=CANCELLED_CODE,
                error_message=CANCELLED_MESSAGE,
                finished_at=now,
                cancel_requested_at=now,
                lease_token=None,
                lease_expires_at=None,
            )
        db.executions[execution_id] = record
        return record

    async def record_steps(
        self,
        execution_id: str,
        lease_token: str,
        steps: Sequence[StepRecord],
        attempts: Sequence[AttemptRecord] = (),
    ) -> ExecutionRecord:
        db = self._db
        db.check_open()
        record = self._held(execution_id, lease_token)
        new_steps = db.prepare_steps(execution_id, steps[record.live_steps :])
        new_attempts = db.prepare_attempts(execution_id, attempts[record.live_attempts :])
        if not new_steps and not new_attempts:
            return record
        record = replace(
            record,
            live_steps=record.live_steps + len(new_steps),
            live_attempts=record.live_attempts + len(new_attempts),
        )
        db.executions[execution_id] = record
        db.add_children(execution_id, new_steps, new_attempts)
        return record

    async def finish_execution(
        self,
        execution_id: str,
        lease_token: str,
        status: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        usage: UsageMap | None = None,
        duration_ms: float | None = None,
        backend: str | None = None,
        steps: Sequence[StepRecord] = (),
        attempts: Sequence[AttemptRecord] = (),
        bump_counters: bool = True,
        cost_usd: float = 0.0,
    ) -> ExecutionRecord:
        db = self._db
        db.check_open()
        check_terminal(status)
        record = self._held(execution_id, lease_token)
        # Build everything before changing anything, so a bad payload leaves no partial write.
        finished = replace(
            record,
            status=status,
            outputs=json_copy(outputs, "outputs"),
            error_code=error_code,
            error_message=error_message,
            usage=json_copy(usage or {}, "usage"),
            duration_ms=duration_ms,
            backend=backend,
            cost_usd=cost_usd,
            finished_at=self.clock(),
            lease_token=None,
            lease_expires_at=None,
        )
        # the first steps and attempts may have been recorded while it ran (record_steps)
        new_steps = db.prepare_steps(execution_id, steps[record.live_steps :])
        new_attempts = db.prepare_attempts(execution_id, attempts[record.live_attempts :])
        if counts_toward_program(status, bump_counters):
            db.count_execution(record.program, record.program_version, status, duration_ms)
        db.executions[execution_id] = finished
        db.add_children(execution_id, new_steps, new_attempts)
        return finished

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        self._db.check_open()
        return self._db.execution(execution_id)

    async def list_executions(
        self,
        filters: ExecutionFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionRecordPage:
        self._db.check_open()
        check_positive("limit", limit)
        f = filters or ExecutionFilter()
        after = decode_cursor(cursor) if cursor else None
        statuses = set(f.statuses)
        matches = [
            r
            for r in self._db.executions.values()
            if (f.program is None or r.program == f.program)
            and (f.program_version is None or r.program_version == f.program_version)
            and (not statuses or r.status in statuses)
            and (f.batch_id is None or r.batch_id == f.batch_id)
            and (f.created_after is None or r.created_at >= f.created_after)
            and (f.created_before is None or r.created_at < f.created_before)
            and (after is None or (r.created_at, r.id) < after)
        ]
        matches.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        page = matches[:limit]
        more = len(matches) > limit
        return ExecutionRecordPage(
            page, encode_cursor(page[-1].created_at, page[-1].id) if more else None
        )

    async def list_steps(self, execution_id: str) -> list[StepRecord]:
        self._db.check_open()
        return list(self._db.steps.get(execution_id, ()))

    async def list_attempts(self, execution_id: str) -> list[AttemptRecord]:
        self._db.check_open()
        return list(self._db.attempts.get(execution_id, ()))

    async def list_steps_for_program(
        self, name: str, *, version: int | None = None, limit: int = 1000
    ) -> list[StepRecord]:
        db = self._db
        db.check_open()
        check_positive("limit", limit)
        steps = [
            s
            for eid, recorded in db.steps.items()
            for s in recorded
            if db.executions[eid].program == name
            and (version is None or db.executions[eid].program_version == version)
        ]
        steps.sort(key=lambda s: s.id or 0, reverse=True)
        return steps[:limit]

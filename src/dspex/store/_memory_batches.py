"""Batches and their group writes in memory (the twin of :mod:`dspex.store._sql_batches`).

Every method runs without awaiting, so on one event loop each call is atomic, as each SQL call is
one transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from dspex.errors import StorageError
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    BatchStatus,
    ExecutionRecord,
    ExecutionStatus,
    FinishRequest,
    StepRecord,
    new_id,
    new_token,
)
from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import (
    check_positive,
    check_terminal,
    claimable,
    counts_toward_program,
    json_copy,
)
from dspex.store.base import Clock
from dspex.store.batches import HANDED_OVER, BatchStore

__all__ = ["MemoryBatches"]


class MemoryBatches(BatchStore):
    """:class:`~dspex.store.batches.BatchStore` over :class:`MemoryTables` (a mixin of
    :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    # -- batches -------------------------------------------------------------------------------

    async def create_batch(
        self,
        program: str,
        program_version: int,
        config: dict[str, Any],
        total: int,
        *,
        batch_id: str | None = None,
    ) -> BatchRecord:
        db = self._db
        db.check_open()
        db.program(program, program_version)
        bid = batch_id or new_id()
        if bid in db.batches:
            raise StorageError(f"batch {bid!r} already exists")
        record = BatchRecord(
            id=bid,
            program=program,
            program_version=program_version,
            config=json_copy(config, "batch config"),
            status=BatchStatus.PENDING,
            total=total,
            completed=0,
            failed=0,
            cancelled=0,
            created_at=self.clock(),
            finished_at=None,
        )
        db.batches[bid] = record
        return record

    async def get_batch(self, batch_id: str) -> BatchRecord:
        self._db.check_open()
        return self._db.batch(batch_id)

    async def list_batches(
        self, *, statuses: Sequence[BatchStatus] = (), limit: int = 100, program: str | None = None
    ) -> list[BatchRecord]:
        self._db.check_open()
        check_positive("limit", limit)
        wanted = set(statuses)
        batches = [
            b
            for b in self._db.batches.values()
            if (not wanted or b.status in wanted) and (program is None or b.program == program)
        ]
        batches.sort(key=lambda b: (b.created_at, b.id), reverse=True)
        return batches[:limit]

    async def set_batch_status(self, batch_id: str, status: BatchStatus) -> BatchRecord:
        self._db.check_open()
        current = self._db.batch(batch_id)
        record = replace(
            current, status=status, finished_at=self.clock() if status.is_terminal else None
        )
        self._db.batches[batch_id] = record
        return record

    # -- the driver ----------------------------------------------------------------------------

    async def take_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float, *, lapsed_only: bool = False
    ) -> BatchRecord | None:
        self._db.check_open()
        check_positive("lease_seconds", lease_seconds)
        current = self._db.batch(batch_id)
        now = self.clock()
        if lapsed_only and (current.cancel_requested or not current.driver_lapsed(now)):
            return None
        record = replace(
            current,
            driver=driver,
            driver_expires_at=now + timedelta(seconds=lease_seconds),
            cancel_requested=False,
        )
        self._db.batches[batch_id] = record
        return record

    async def renew_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float
    ) -> BatchRecord:
        self._db.check_open()
        check_positive("lease_seconds", lease_seconds)
        current = self._db.batch(batch_id)
        if current.driver != driver:
            return current
        record = replace(current, driver_expires_at=self.clock() + timedelta(seconds=lease_seconds))
        self._db.batches[batch_id] = record
        return record

    async def release_batch_driver(self, batch_id: str, driver: str) -> None:
        self._db.check_open()
        current = self._db.batches.get(batch_id)
        if current is not None and current.driver == driver:
            self._db.batches[batch_id] = replace(current, driver=None, driver_expires_at=None)

    async def hand_over_batch(self, batch_id: str) -> BatchRecord | None:
        self._db.check_open()
        current = self._db.batch(batch_id)
        if current.status is not BatchStatus.CANCELLED or current.cancel_requested:
            return None
        record = replace(
            current,
            status=BatchStatus.RUNNING,
            finished_at=None,
            driver=HANDED_OVER,
            driver_expires_at=self.clock(),
        )
        self._db.batches[batch_id] = record
        return record

    async def request_batch_cancel(self, batch_id: str) -> BatchRecord:
        self._db.check_open()
        current = self._db.batch(batch_id)
        if current.status.is_terminal:
            return current
        now = self.clock()
        live = current.driver_expires_at is not None and current.driver_expires_at > now
        record = replace(current, cancel_requested=True)
        if not live:
            record = replace(record, status=BatchStatus.CANCELLED, finished_at=now)
        self._db.batches[batch_id] = record
        return record

    async def lapsed_batches(self, *, limit: int = 100) -> list[BatchRecord]:
        self._db.check_open()
        check_positive("limit", limit)
        now = self.clock()
        found = [
            b for b in self._db.batches.values() if b.driver_lapsed(now) and not b.cancel_requested
        ]
        found.sort(key=lambda b: (b.created_at, b.id))
        return found[:limit]

    # -- items ---------------------------------------------------------------------------------

    async def add_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
    ) -> int:
        db = self._db
        db.check_open()
        db.check_refs(program, program_version, batch_id, "")
        # Copy every payload before changing anything, so a bad one leaves the batch unchanged.
        fresh = [
            (index, json_copy(inputs, "inputs"))
            for index, inputs in items
            if (batch_id, index) not in db.batch_items
        ]
        now = self.clock()
        added = 0
        for index, inputs in fresh:
            if (batch_id, index) in db.batch_items:
                continue  # the same index twice in one call: the first one wins
            db.insert_execution(
                ExecutionRecord.pending(
                    new_id(),
                    program,
                    program_version,
                    inputs,
                    now,
                    batch_id=batch_id,
                    batch_index=index,
                )
            )
            added += 1
        return added

    async def claim_batch_items(
        self,
        batch_id: str,
        indexes: Sequence[int],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        self._db.check_open()
        check_positive("lease_seconds", lease_seconds)
        now = self.clock()
        expires = now + timedelta(seconds=lease_seconds)
        return self._claim(batch_id, indexes, worker_id, new_token(), now, expires, retry_failed)

    async def add_and_claim_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        db = self._db
        db.check_open()
        check_positive("lease_seconds", lease_seconds)
        db.check_refs(program, program_version, batch_id, "")
        # Copy every payload before changing anything, so a bad one leaves the batch unchanged.
        fresh = [
            (index, json_copy(inputs, "inputs"))
            for index, inputs in items
            if (batch_id, index) not in db.batch_items
        ]
        existing = [index for index, _ in items if (batch_id, index) in db.batch_items]
        now = self.clock()
        token = new_token()
        expires = now + timedelta(seconds=lease_seconds)
        claimed = self._claim(batch_id, existing, worker_id, token, now, expires, retry_failed)
        for index, inputs in fresh:
            if (batch_id, index) in db.batch_items:
                continue  # the same index twice in one call: the first one wins
            eid = new_id()
            db.insert_execution(
                ExecutionRecord.started(
                    eid,
                    program,
                    program_version,
                    inputs,
                    now,
                    worker_id=worker_id,
                    lease_token=token,
                    lease_seconds=lease_seconds,
                    batch_id=batch_id,
                    batch_index=index,
                )
            )
            claimed[index] = (eid, token)
        return claimed

    def _claim(
        self,
        batch_id: str,
        indexes: Iterable[int],
        worker_id: str,
        token: str,
        now: datetime,
        expires: datetime,
        retry_failed: bool,
    ) -> dict[int, tuple[str, str]]:
        """Claim the claimable items at ``indexes`` under ``token`` (see ``claim_batch_items``)."""
        db = self._db
        claimed: dict[int, tuple[str, str]] = {}
        for index in indexes:
            eid = db.batch_items.get((batch_id, index))
            if eid is None or index in claimed:
                continue
            record = db.executions[eid]
            if not claimable(record.status, record.lease_expires_at, now, retry_failed):
                continue
            if record.status in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
                db.count_in_batch(batch_id, record.status, -1)
            db.executions[eid] = replace(
                record,
                status=ExecutionStatus.RUNNING,
                started_at=now,
                attempts=record.attempts + 1,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=expires,
            )
            claimed[index] = (eid, token)
        return claimed

    async def finish_executions(self, requests: Sequence[FinishRequest]) -> list[bool]:
        db = self._db
        db.check_open()
        for request in requests:
            check_terminal(request.status)
        # Prepare every write first: a bad payload must leave the whole group unwritten.
        now = self.clock()
        planned: list[tuple[ExecutionRecord, list[StepRecord], list[AttemptRecord]] | None] = []
        seen: set[str] = set()
        for r in requests:
            current = db.executions.get(r.execution_id)
            if (
                current is None
                or r.execution_id in seen
                or current.status is not ExecutionStatus.RUNNING
                or current.lease_token != r.lease_token
            ):
                planned.append(None)
                continue
            seen.add(r.execution_id)
            finished = replace(
                current,
                status=r.status,
                outputs=json_copy(r.outputs, "outputs"),
                error_code=r.error_code,
                error_message=r.error_message,
                usage=json_copy(r.usage, "usage"),
                duration_ms=r.duration_ms,
                backend=r.backend,
                cost_usd=r.cost_usd,
                finished_at=now,
                lease_token=None,
                lease_expires_at=None,
            )
            steps = [replace(s, usage=json_copy(s.usage, "step usage")) for s in r.steps]
            planned.append((finished, steps, list(r.attempts)))
        written: list[bool] = []
        for r, plan in zip(requests, planned, strict=True):
            if plan is None:
                written.append(False)
                continue
            finished, steps, attempts = plan
            eid = finished.id
            if counts_toward_program(finished.status, r.bump_counters):
                db.count_execution(
                    finished.program,
                    finished.program_version,
                    finished.status,
                    finished.duration_ms,
                )
            if finished.batch_id is not None and finished.batch_id in db.batches:
                db.count_in_batch(finished.batch_id, finished.status)
                db.add_batch_spend(finished.batch_id, r.cost_usd, r.rate_limited_ms)
            db.executions[eid] = finished
            db.add_children(eid, db.prepare_steps(eid, steps), db.prepare_attempts(eid, attempts))
            written.append(True)
        return written

    async def heartbeat_lease(self, lease_token: str, lease_seconds: float) -> int:
        db = self._db
        db.check_open()
        check_positive("lease_seconds", lease_seconds)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        held = [
            r
            for r in db.executions.values()
            if r.status is ExecutionStatus.RUNNING and r.lease_token == lease_token
        ]
        for record in held:
            db.executions[record.id] = replace(record, lease_expires_at=expires)
        return len(held)

    async def batch_item_states(self, batch_id: str) -> dict[str, int]:
        self._db.check_open()
        self._db.batch(batch_id)
        states: dict[str, int] = {}
        for record in self._db.executions.values():
            if record.batch_id == batch_id:
                states[record.status.value] = states.get(record.status.value, 0) + 1
        return states

    async def iter_batch_results(
        self, batch_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[ExecutionRecord]:
        check_positive("chunk", chunk)
        db = self._db
        db.check_open()
        db.batch(batch_id)
        indexes = sorted(index for bid, index in db.batch_items if bid == batch_id)
        for start in range(0, len(indexes), chunk):
            for index in indexes[start : start + chunk]:
                eid = db.batch_items.get((batch_id, index))
                if eid is not None and eid in db.executions:
                    yield db.executions[eid]

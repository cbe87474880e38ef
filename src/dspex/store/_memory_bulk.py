"""Bulk batch operations for the in-memory store (the twin of :mod:`dspex.store._sql_bulk`).

A mixin of :class:`~dspex.store.memory.MemoryStore`: it works on the store's dictionaries. Every
method runs without awaiting, so on one event loop each call is atomic, as each SQL call is one
transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from dspex.records import (
    AttemptRecord,
    BatchRecord,
    ExecutionRecord,
    ExecutionStatus,
    FinishRequest,
    ProgramRecord,
    StepRecord,
    new_id,
    new_token,
)
from dspex.store.base import (
    Store,
    check_positive,
    check_terminal,
    claimable,
    counts_toward_program,
    json_copy,
)

__all__ = ["MemoryBulk"]


class MemoryBulk(Store):
    """The bulk half of :class:`~dspex.store.memory.MemoryStore`, used by batches."""

    # Owned and initialised by MemoryStore; declared here for the type checker.
    _programs: dict[str, list[ProgramRecord]]
    _executions: dict[str, ExecutionRecord]
    _steps: dict[str, list[StepRecord]]
    _attempts: dict[str, list[AttemptRecord]]
    _batches: dict[str, BatchRecord]
    _batch_items: dict[tuple[str, int], str]

    if TYPE_CHECKING:

        def _check_open(self) -> None: ...

        def _check_refs(
            self,
            program: str,
            version: int,
            batch_id: str | None,
            eid: str,
            batch_index: int | None = None,
        ) -> None: ...

        def _bump(
            self, name: str, version: int, succeeded: bool, duration_ms: float | None
        ) -> None: ...

        def _prepare_steps(self, eid: str, steps: Iterable[StepRecord]) -> list[StepRecord]: ...

        def _prepare_attempts(
            self, eid: str, attempts: Iterable[AttemptRecord]
        ) -> list[AttemptRecord]: ...

    async def add_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
    ) -> None:
        self._check_open()
        self._check_refs(program, program_version, batch_id, "")
        # Copy every payload before adding any, so a bad one leaves the batch unchanged.
        fresh = [
            (index, json_copy(inputs, "inputs"))
            for index, inputs in items
            if (batch_id, index) not in self._batch_items
        ]
        now = self.clock()
        for index, inputs in fresh:
            if (batch_id, index) in self._batch_items:
                continue  # the same index twice in one call: the first one wins
            eid = new_id()
            self._executions[eid] = ExecutionRecord.pending(
                eid, program, program_version, inputs, now, batch_id=batch_id, batch_index=index
            )
            self._batch_items[(batch_id, index)] = eid

    async def claim_batch_items(
        self,
        batch_id: str,
        indexes: Sequence[int],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        self._check_open()
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
        self._check_open()
        check_positive("lease_seconds", lease_seconds)
        self._check_refs(program, program_version, batch_id, "")
        # Copy every payload before changing anything, so a bad one leaves the batch unchanged.
        fresh = [
            (index, json_copy(inputs, "inputs"))
            for index, inputs in items
            if (batch_id, index) not in self._batch_items
        ]
        existing = [index for index, _ in items if (batch_id, index) in self._batch_items]
        now = self.clock()
        token = new_token()
        expires = now + timedelta(seconds=lease_seconds)
        claimed = self._claim(batch_id, existing, worker_id, token, now, expires, retry_failed)
        for index, inputs in fresh:
            if (batch_id, index) in self._batch_items:
                continue  # the same index twice in one call: the first one wins
            eid = new_id()
            self._executions[eid] = replace(
                ExecutionRecord.pending(
                    eid, program, program_version, inputs, now, batch_id=batch_id, batch_index=index
                ),
                status=ExecutionStatus.RUNNING,
                attempts=1,
                started_at=now,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=expires,
            )
            self._batch_items[(batch_id, index)] = eid
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
        claimed: dict[int, tuple[str, str]] = {}
        left = {ExecutionStatus.FAILED: 0, ExecutionStatus.CANCELLED: 0}
        for index in indexes:
            eid = self._batch_items.get((batch_id, index))
            if eid is None or index in claimed:
                continue
            record = self._executions[eid]
            if not claimable(record.status, record.lease_expires_at, now, retry_failed):
                continue
            if record.status in left:
                left[record.status] += 1
            self._executions[eid] = replace(
                record,
                status=ExecutionStatus.RUNNING,
                started_at=now,
                attempts=record.attempts + 1,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=expires,
            )
            claimed[index] = (eid, token)
        if any(left.values()):
            batch = self._batches[batch_id]
            self._batches[batch_id] = replace(
                batch,
                failed=batch.failed - left[ExecutionStatus.FAILED],
                cancelled=batch.cancelled - left[ExecutionStatus.CANCELLED],
            )
        return claimed

    async def finish_executions(self, requests: Sequence[FinishRequest]) -> list[bool]:
        self._check_open()
        for request in requests:
            check_terminal(request.status)
        # Prepare every write first: a bad payload must leave the whole group unwritten.
        now = self.clock()
        planned: list[tuple[ExecutionRecord, list[StepRecord], list[AttemptRecord]] | None] = []
        seen: set[str] = set()
        for r in requests:
            current = self._executions.get(r.execution_id)
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
                finished_at=now,
                lease_token=None,
                lease_expires_at=None,
            )
            steps = [replace(s, usage=json_copy(s.usage, "step usage")) for s in r.steps]
            planned.append((finished, steps, list(r.attempts)))
        written: list[bool] = []
        for request, plan in zip(requests, planned, strict=True):
            if plan is None:
                written.append(False)
                continue
            finished, steps, attempts = plan
            eid = finished.id
            if counts_toward_program(finished.status, request.bump_counters):
                self._bump(
                    finished.program,
                    finished.program_version,
                    finished.status is ExecutionStatus.COMPLETED,
                    finished.duration_ms,
                )
            if finished.batch_id is not None and finished.batch_id in self._batches:
                self._count_in_batch(finished.batch_id, finished.status)
            self._executions[eid] = finished
            self._steps.setdefault(eid, []).extend(self._prepare_steps(eid, steps))
            self._attempts.setdefault(eid, []).extend(self._prepare_attempts(eid, attempts))
            written.append(True)
        return written

    def _count_in_batch(self, batch_id: str, status: ExecutionStatus) -> None:
        batch = self._batches[batch_id]
        self._batches[batch_id] = replace(
            batch,
            completed=batch.completed + int(status is ExecutionStatus.COMPLETED),
            failed=batch.failed + int(status is ExecutionStatus.FAILED),
            cancelled=batch.cancelled + int(status is ExecutionStatus.CANCELLED),
        )

    async def heartbeat_lease(self, lease_token: str, lease_seconds: float) -> int:
        self._check_open()
        check_positive("lease_seconds", lease_seconds)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        held = [
            r
            for r in self._executions.values()
            if r.status is ExecutionStatus.RUNNING and r.lease_token == lease_token
        ]
        for record in held:
            self._executions[record.id] = replace(record, lease_expires_at=expires)
        return len(held)

    async def batch_item_states(self, batch_id: str) -> dict[str, int]:
        await self.get_batch(batch_id)
        states: dict[str, int] = {}
        for record in self._executions.values():
            if record.batch_id == batch_id:
                states[record.status.value] = states.get(record.status.value, 0) + 1
        return states

    async def iter_batch_results(
        self, batch_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[ExecutionRecord]:
        check_positive("chunk", chunk)
        await self.get_batch(batch_id)
        indexes = sorted(index for bid, index in self._batch_items if bid == batch_id)
        for start in range(0, len(indexes), chunk):
            for index in indexes[start : start + chunk]:
                eid = self._batch_items.get((batch_id, index))
                if eid is not None and eid in self._executions:
                    yield self._executions[eid]

"""The in-memory twin of the SQL store: same contract, no database.

Every method runs without awaiting anything, so on one event loop each call is atomic, just as
each SQL call is one transaction. Payloads go through a JSON round trip on the way in, so callers
see exactly what a database would give back (and get the same error for unserialisable values).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from dspex.errors import LeaseLostError, NotFoundError, ProgramStateError, StorageError
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    BatchStatus,
    BreakerRecord,
    ExecutionFilter,
    ExecutionRecord,
    ExecutionRecordPage,
    ExecutionStatus,
    ProgramRecord,
    ProgramStatus,
    SignatureRecord,
    StepRecord,
    UsageMap,
    new_id,
    new_token,
    utc_now,
)
from dspex.store._maintenance_memory import MemoryMaintenance
from dspex.store._memory_bulk import MemoryBulk
from dspex.store.base import (
    Clock,
    IdKind,
    Store,
    check_positive,
    check_prefix,
    check_startable,
    check_terminal,
    counts_toward_program,
    decode_cursor,
    encode_cursor,
    json_copy,
)

__all__ = ["MemoryStore"]

MEMORY_REVISION = "memory"


class MemoryStore(MemoryBulk, MemoryMaintenance, Store):
    """A :class:`~dspex.store.base.Store` kept in dictionaries (lost when the process ends).

    Example:
        >>> store = MemoryStore()
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        super().__init__(clock=clock)
        self._signatures: dict[str, SignatureRecord] = {}
        self._programs: dict[str, list[ProgramRecord]] = {}
        self._executions: dict[str, ExecutionRecord] = {}
        self._steps: dict[str, list[StepRecord]] = {}
        self._attempts: dict[str, list[AttemptRecord]] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._breakers: dict[str, BreakerRecord] = {}
        # (batch_id, batch_index) → execution id: the unique index the SQL schema has.
        self._batch_items: dict[tuple[str, int], str] = {}
        self._next_id = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return "memory://"

    async def initialize(self) -> None:
        self._check_open()

    async def close(self) -> None:
        self._closed = True

    async def ping(self) -> float:
        self._check_open()
        start = time.perf_counter()
        return (time.perf_counter() - start) * 1000.0

    async def schema_revision(self) -> str | None:
        self._check_open()
        return MEMORY_REVISION

    async def is_current(self) -> bool:
        self._check_open()
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    # -- signatures ----------------------------------------------------------------------------

    async def put_signature(self, name: str, spec: dict[str, Any]) -> SignatureRecord:
        self._check_open()
        now = self.clock()
        old = self._signatures.get(name)
        record = SignatureRecord(
            name, json_copy(spec, "signature spec"), old.created_at if old else now, now
        )
        self._signatures[name] = record
        return record

    async def get_signature(self, name: str) -> SignatureRecord:
        self._check_open()
        try:
            return self._signatures[name]
        except KeyError:
            raise NotFoundError(f"signature {name!r} does not exist") from None

    async def list_signatures(self) -> list[SignatureRecord]:
        self._check_open()
        return [self._signatures[name] for name in sorted(self._signatures)]

    # -- programs ------------------------------------------------------------------------------

    async def put_program(self, name: str, spec: dict[str, Any], spec_hash: str) -> ProgramRecord:
        self._check_open()
        versions = self._programs.setdefault(name, [])
        if versions and versions[-1].spec_hash == spec_hash:
            return versions[-1]
        now = self.clock()
        record = ProgramRecord(
            name=name,
            version=len(versions) + 1,
            spec=json_copy(spec, "program spec"),
            spec_hash=spec_hash,
            status=ProgramStatus.DRAFT,
            error=None,
            execution_count=0,
            success_count=0,
            failure_count=0,
            total_duration_ms=0.0,
            created_at=now,
            updated_at=now,
        )
        versions.append(record)
        return record

    def _program(self, name: str, version: int | None) -> ProgramRecord:
        versions = self._programs.get(name)
        if not versions:
            raise NotFoundError(f"program {name!r} does not exist")
        if version is None:
            return versions[-1]
        if not 1 <= version <= len(versions):
            raise NotFoundError(f"program {name!r} has no version {version}")
        return versions[version - 1]

    def _replace_program(self, record: ProgramRecord) -> None:
        self._programs[record.name][record.version - 1] = record

    async def get_program(self, name: str, version: int | None = None) -> ProgramRecord:
        self._check_open()
        return self._program(name, version)

    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramRecord]:
        self._check_open()
        out: list[ProgramRecord] = []
        for name in sorted(self._programs):
            versions = self._programs[name]
            out.extend(versions if all_versions else versions[-1:])
        return out

    async def set_program_status(
        self,
        name: str,
        version: int,
        status: ProgramStatus,
        *,
        error: str | None = None,
        expected: ProgramStatus | None = None,
    ) -> ProgramRecord:
        self._check_open()
        current = self._program(name, version)
        if expected is not None and current.status != expected:
            raise ProgramStateError(
                f"program {name!r} v{version} is {current.status.value}, not {expected.value}",
                status=current.status.value,
            )
        if not current.status.can_transition_to(status):
            raise ProgramStateError(
                f"program {name!r} v{version} cannot go from {current.status.value}"
                f" to {status.value}",
                status=current.status.value,
            )
        record = replace(
            current,
            status=status,
            error=error if status is ProgramStatus.ERROR else None,
            updated_at=self.clock(),
        )
        self._replace_program(record)
        return record

    async def bump_program_counters(
        self, name: str, version: int, *, succeeded: bool, duration_ms: float
    ) -> None:
        self._check_open()
        self._bump(name, version, succeeded, duration_ms)

    def _bump(self, name: str, version: int, succeeded: bool, duration_ms: float | None) -> None:
        current = self._program(name, version)
        self._replace_program(
            replace(
                current,
                execution_count=current.execution_count + 1,
                success_count=current.success_count + int(succeeded),
                failure_count=current.failure_count + int(not succeeded),
                total_duration_ms=current.total_duration_ms + (duration_ms or 0.0),
            )
        )

    # -- executions ----------------------------------------------------------------------------

    def _check_refs(
        self,
        program: str,
        version: int,
        batch_id: str | None,
        eid: str,
        batch_index: int | None = None,
    ) -> None:
        self._program(program, version)
        if batch_id is not None and batch_id not in self._batches:
            raise NotFoundError(f"batch {batch_id!r} does not exist")
        if eid in self._executions:
            raise StorageError(f"execution {eid!r} already exists")
        if batch_id is not None and (batch_id, batch_index) in self._batch_items:
            raise StorageError(f"batch {batch_id!r} already has an item {batch_index}")

    def _insert(self, record: ExecutionRecord) -> None:
        self._executions[record.id] = record
        if record.batch_id is not None and record.batch_index is not None:
            self._batch_items[(record.batch_id, record.batch_index)] = record.id

    async def create_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        *,
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
    ) -> ExecutionRecord:
        self._check_open()
        eid = execution_id or new_id()
        self._check_refs(program, program_version, batch_id, eid, batch_index)
        record = ExecutionRecord.pending(
            eid,
            program,
            program_version,
            json_copy(inputs, "inputs"),
            self.clock(),
            batch_id=batch_id,
            batch_index=batch_index,
        )
        self._insert(record)
        return record

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
        self._check_open()
        check_positive("lease_seconds", lease_seconds)
        eid = execution_id or new_id()
        self._check_refs(program, program_version, batch_id, eid, batch_index)
        if require_ready or require_latest:
            check_startable(
                self._program(program, program_version),
                self._program(program, None) if require_latest else None,
                require_ready=require_ready,
            )
        now = self.clock()
        record = replace(
            ExecutionRecord.pending(
                eid,
                program,
                program_version,
                json_copy(inputs, "inputs"),
                now,
                batch_id=batch_id,
                batch_index=batch_index,
            ),
            status=ExecutionStatus.RUNNING,
            attempts=1,
            started_at=now,
            worker_id=worker_id,
            lease_token=new_token(),
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        self._insert(record)
        return record

    def _execution(self, execution_id: str) -> ExecutionRecord:
        try:
            return self._executions[execution_id]
        except KeyError:
            raise NotFoundError(f"execution {execution_id!r} does not exist") from None

    def _held(self, execution_id: str, lease_token: str) -> ExecutionRecord:
        record = self._execution(execution_id)
        if record.status is not ExecutionStatus.RUNNING or record.lease_token != lease_token:
            raise LeaseLostError(f"execution {execution_id!r} is no longer held by this lease")
        return record

    async def claim_execution(self, execution_id: str, worker_id: str, lease_seconds: float) -> str:
        self._check_open()
        check_positive("lease_seconds", lease_seconds)
        record = self._execution(execution_id)
        now = self.clock()
        expired = (
            record.status is ExecutionStatus.RUNNING
            and record.lease_expires_at is not None
            and record.lease_expires_at < now
        )
        if record.status is not ExecutionStatus.PENDING and not expired:
            raise LeaseLostError(
                f"execution {execution_id!r} is {record.status.value} and cannot be claimed"
            )
        token = new_token()
        self._executions[execution_id] = replace(
            record,
            status=ExecutionStatus.RUNNING,
            started_at=now,
            attempts=record.attempts + 1,
            worker_id=worker_id,
            lease_token=token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
        return token

    async def heartbeat(
        self, execution_id: str, lease_token: str, lease_seconds: float
    ) -> datetime:
        self._check_open()
        check_positive("lease_seconds", lease_seconds)
        record = self._held(execution_id, lease_token)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        self._executions[execution_id] = replace(record, lease_expires_at=expires)
        return expires

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
    ) -> ExecutionRecord:
        self._check_open()
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
            finished_at=self.clock(),
            lease_token=None,
            lease_expires_at=None,
        )
        new_steps = self._prepare_steps(execution_id, steps)
        new_attempts = self._prepare_attempts(execution_id, attempts)
        if counts_toward_program(status, bump_counters):
            self._bump(
                record.program,
                record.program_version,
                status is ExecutionStatus.COMPLETED,
                duration_ms,
            )
        self._executions[execution_id] = finished
        self._steps.setdefault(execution_id, []).extend(new_steps)
        self._attempts.setdefault(execution_id, []).extend(new_attempts)
        return finished

    async def record_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        status: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        usage: UsageMap | None = None,
        duration_ms: float | None = None,
        backend: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        steps: Sequence[StepRecord] = (),
        attempts: Sequence[AttemptRecord] = (),
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
        worker_id: str | None = None,
        bump_counters: bool = True,
    ) -> ExecutionRecord:
        self._check_open()
        check_terminal(status)
        eid = execution_id or new_id()
        self._check_refs(program, program_version, batch_id, eid, batch_index)
        now = self.clock()
        record = ExecutionRecord(
            id=eid,
            program=program,
            program_version=program_version,
            status=status,
            inputs=json_copy(inputs, "inputs"),
            outputs=json_copy(outputs, "outputs"),
            error_code=error_code,
            error_message=error_message,
            attempts=1,
            created_at=started_at or now,
            started_at=started_at or now,
            finished_at=finished_at or now,
            duration_ms=duration_ms,
            usage=json_copy(usage or {}, "usage"),
            backend=backend,
            batch_id=batch_id,
            batch_index=batch_index,
            worker_id=worker_id,
            lease_token=None,
            lease_expires_at=None,
        )
        new_steps = self._prepare_steps(eid, steps)
        new_attempts = self._prepare_attempts(eid, attempts)
        if counts_toward_program(status, bump_counters):
            self._bump(program, program_version, status is ExecutionStatus.COMPLETED, duration_ms)
        self._insert(record)
        self._steps[eid] = new_steps
        self._attempts[eid] = new_attempts
        return record

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        self._check_open()
        return self._execution(execution_id)

    async def list_executions(
        self,
        filters: ExecutionFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionRecordPage:
        self._check_open()
        check_positive("limit", limit)
        f = filters or ExecutionFilter()
        after = decode_cursor(cursor) if cursor else None
        statuses = set(f.statuses)
        matches = [
            r
            for r in self._executions.values()
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

    def _next(self) -> int:
        self._next_id += 1
        return self._next_id

    def _prepare_steps(self, eid: str, steps: Iterable[StepRecord]) -> list[StepRecord]:
        return [
            replace(s, usage=json_copy(s.usage, "step usage"), execution_id=eid, id=self._next())
            for s in steps
        ]

    def _prepare_attempts(self, eid: str, attempts: Iterable[AttemptRecord]) -> list[AttemptRecord]:
        return [replace(a, execution_id=eid, id=self._next()) for a in attempts]

    async def add_steps(
        self, execution_id: str, lease_token: str, steps: Iterable[StepRecord]
    ) -> None:
        self._check_open()
        self._held(execution_id, lease_token)
        self._steps.setdefault(execution_id, []).extend(self._prepare_steps(execution_id, steps))

    async def add_attempts(
        self, execution_id: str, lease_token: str, attempts: Iterable[AttemptRecord]
    ) -> None:
        self._check_open()
        self._held(execution_id, lease_token)
        prepared = self._prepare_attempts(execution_id, attempts)
        self._attempts.setdefault(execution_id, []).extend(prepared)

    async def list_steps(self, execution_id: str) -> list[StepRecord]:
        self._check_open()
        return list(self._steps.get(execution_id, ()))

    async def list_attempts(self, execution_id: str) -> list[AttemptRecord]:
        self._check_open()
        return list(self._attempts.get(execution_id, ()))

    async def list_steps_for_program(
        self, name: str, *, version: int | None = None, limit: int = 1000
    ) -> list[StepRecord]:
        self._check_open()
        check_positive("limit", limit)
        steps = [
            s
            for eid, recorded in self._steps.items()
            for s in recorded
            if self._executions[eid].program == name
            and (version is None or self._executions[eid].program_version == version)
        ]
        steps.sort(key=lambda s: s.id or 0, reverse=True)
        return steps[:limit]

    async def find_expired_leases(
        self, now: datetime | None = None, *, limit: int = 100
    ) -> list[ExecutionRecord]:
        self._check_open()
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
        return expired[:limit]

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
        self._check_open()
        self._program(program, program_version)
        bid = batch_id or new_id()
        if bid in self._batches:
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
        self._batches[bid] = record
        return record

    async def match_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> list[str]:
        self._check_open()
        check_prefix(prefix, limit)
        ids = self._executions if kind == "execution" else self._batches
        return sorted(i for i in ids if i.startswith(prefix))[:limit]

    async def get_batch(self, batch_id: str) -> BatchRecord:
        self._check_open()
        try:
            return self._batches[batch_id]
        except KeyError:
            raise NotFoundError(f"batch {batch_id!r} does not exist") from None

    async def list_batches(
        self, *, statuses: Sequence[BatchStatus] = (), limit: int = 100, program: str | None = None
    ) -> list[BatchRecord]:
        self._check_open()
        check_positive("limit", limit)
        wanted = set(statuses)
        batches = [
            b
            for b in self._batches.values()
            if (not wanted or b.status in wanted) and (program is None or b.program == program)
        ]
        batches.sort(key=lambda b: (b.created_at, b.id), reverse=True)
        return batches[:limit]

    async def update_batch_counts(
        self, batch_id: str, *, completed: int = 0, failed: int = 0, cancelled: int = 0
    ) -> BatchRecord:
        current = await self.get_batch(batch_id)
        record = replace(
            current,
            completed=current.completed + completed,
            failed=current.failed + failed,
            cancelled=current.cancelled + cancelled,
        )
        self._batches[batch_id] = record
        return record

    async def set_batch_status(self, batch_id: str, status: BatchStatus) -> BatchRecord:
        current = await self.get_batch(batch_id)
        record = replace(
            current, status=status, finished_at=self.clock() if status.is_terminal else None
        )
        self._batches[batch_id] = record
        return record

    async def list_batch_executions(self, batch_id: str) -> list[ExecutionRecord]:
        await self.get_batch(batch_id)
        found = [r for r in self._executions.values() if r.batch_id == batch_id]
        found.sort(key=lambda r: (r.batch_index is None, r.batch_index or 0, r.created_at, r.id))
        return found

    # -- breakers ------------------------------------------------------------------------------

    async def save_breaker(self, record: BreakerRecord) -> None:
        self._check_open()
        self._breakers[record.backend] = replace(record, updated_at=self.clock())

    async def list_breakers(self) -> list[BreakerRecord]:
        self._check_open()
        return [self._breakers[name] for name in sorted(self._breakers)]

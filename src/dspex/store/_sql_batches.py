"""Batches and their group writes in SQL (the ``batches`` table and its executions).

Each group write is one transaction made of a few set-based statements (``IN`` lists,
executemany), never one round trip per item. On SQLite the group writes go to the writer thread
(:mod:`dspex.store._sqlite_jobs`); the SQLAlchemy Core statements here are what PostgreSQL runs,
and the reads on both.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from dspex.errors import NotFoundError, StorageError
from dspex.records import (
    BatchRecord,
    BatchStatus,
    ExecutionRecord,
    ExecutionStatus,
    FinishRequest,
    new_id,
    new_token,
)
from dspex.store import _rows
from dspex.store import _sqlite_jobs as _jobs
from dspex.store._rules import (
    check_positive,
    check_terminal,
    claimable,
    counts_toward_program,
    json_copy,
)
from dspex.store._sql_core import SqlCore
from dspex.store.batches import HANDED_OVER, BatchStore
from dspex.store.tables import JSON
from dspex.store.tables import attempts as t_attempts
from dspex.store.tables import batches as t_batches
from dspex.store.tables import executions as t_exec
from dspex.store.tables import programs as t_programs
from dspex.store.tables import steps as t_steps

__all__ = ["SqlBatches"]

_RUNNING = ExecutionStatus.RUNNING.value
_OPEN = [s.value for s in BatchStatus if not s.is_terminal]
T = TypeVar("T")
# Keeps every IN list and multi-row statement well under the drivers' parameter limits.
CHUNK = 500


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class ProgramDeltas:
    """What a group of finished executions adds to one program version's counters."""

    executions: int = 0
    successes: int = 0
    failures: int = 0
    duration_ms: float = 0.0

    def add(self, status: ExecutionStatus, duration_ms: float | None) -> None:
        self.executions += 1
        self.successes += int(status is ExecutionStatus.COMPLETED)
        self.failures += int(status is ExecutionStatus.FAILED)
        self.duration_ms += duration_ms or 0.0


@dataclass
class BatchDeltas:
    """What a group of finished executions adds to one batch's counts."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    cost_usd: float = 0.0
    rate_limited_s: float = 0.0

    def add(self, status: ExecutionStatus, cost_usd: float = 0.0, waited_ms: float = 0.0) -> None:
        self.completed += int(status is ExecutionStatus.COMPLETED)
        self.failed += int(status is ExecutionStatus.FAILED)
        self.cancelled += int(status is ExecutionStatus.CANCELLED)
        self.cost_usd += cost_usd
        self.rate_limited_s += waited_ms / 1000.0


def check_requests(requests: Sequence[FinishRequest]) -> None:
    """Validate a group before writing any of it (terminal statuses, JSON payloads)."""
    for r in requests:
        check_terminal(r.status)
        json_copy(r.outputs, "outputs")
        json_copy(r.usage, "usage")
        for s in r.steps:
            json_copy(s.usage, "step usage")


class SqlBatches(SqlCore, BatchStore):
    """:class:`~dspex.store.batches.BatchStore` in SQLite or PostgreSQL."""

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
        values = {
            "id": batch_id or new_id(),
            "program": program,
            "program_version": program_version,
            "config": config,
            "status": BatchStatus.PENDING.value,
            "total": total,
            "completed": 0,
            "failed": 0,
            "cancelled": 0,
            "created_at": self.clock(),
        }
        try:
            async with self._tx(write=True) as conn:
                result = await conn.execute(
                    t_batches.insert().values(**values).returning(t_batches)
                )
                return _rows.batch_from_row(result.mappings().one())
        except StorageError as exc:
            raise await self._missing_reference(exc, program, program_version, None) from exc

    async def get_batch(self, batch_id: str) -> BatchRecord:
        async with self._tx() as conn:
            result = await conn.execute(t_batches.select().where(t_batches.c.id == batch_id))
            row = result.mappings().first()
        if row is None:
            raise NotFoundError(f"batch {batch_id!r} does not exist")
        return _rows.batch_from_row(row)

    async def list_batches(
        self, *, statuses: Sequence[BatchStatus] = (), limit: int = 100, program: str | None = None
    ) -> list[BatchRecord]:
        check_positive("limit", limit)
        query = t_batches.select()
        if statuses:
            query = query.where(t_batches.c.status.in_([s.value for s in statuses]))
        if program is not None:
            query = query.where(t_batches.c.program == program)
        query = query.order_by(t_batches.c.created_at.desc(), t_batches.c.id.desc()).limit(limit)
        async with self._tx() as conn:
            return [_rows.batch_from_row(r) for r in (await conn.execute(query)).mappings()]

    async def set_batch_status(self, batch_id: str, status: BatchStatus) -> BatchRecord:
        stmt = (
            t_batches.update()
            .where(t_batches.c.id == batch_id)
            .values(status=status.value, finished_at=self.clock() if status.is_terminal else None)
            .returning(t_batches)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise NotFoundError(f"batch {batch_id!r} does not exist")
        return _rows.batch_from_row(row)

    # -- the driver ----------------------------------------------------------------------------

    async def take_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float, *, lapsed_only: bool = False
    ) -> BatchRecord | None:
        check_positive("lease_seconds", lease_seconds)
        now = self.clock()
        b = t_batches.c
        stmt = t_batches.update().where(b.id == batch_id)
        if lapsed_only:
            # One conditional UPDATE: of processes racing for the batch, the row lock lets one
            # write and the others find the condition false when they re-read the row.
            stmt = stmt.where(
                b.status.in_(_OPEN),
                b.cancel_requested_at.is_(None),
                b.driver_expires_at.is_not(None),
                b.driver_expires_at <= now,
            )
        stmt = stmt.values(
            driver=driver,
            driver_expires_at=now + timedelta(seconds=lease_seconds),
            cancel_requested_at=None,
        ).returning(t_batches)
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is not None:
            return _rows.batch_from_row(row)
        await self.get_batch(batch_id)  # NotFoundError when it does not exist
        return None

    async def renew_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float
    ) -> BatchRecord:
        check_positive("lease_seconds", lease_seconds)
        b = t_batches.c
        stmt = (
            t_batches.update()
            .where(b.id == batch_id, b.driver == driver)
            .values(driver_expires_at=self.clock() + timedelta(seconds=lease_seconds))
            .returning(t_batches)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return await self.get_batch(batch_id)
        return _rows.batch_from_row(row)

    async def release_batch_driver(self, batch_id: str, driver: str) -> None:
        b = t_batches.c
        stmt = (
            t_batches.update()
            .where(b.id == batch_id, b.driver == driver)
            .values(driver=None, driver_expires_at=None)
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def hand_over_batch(self, batch_id: str) -> BatchRecord | None:
        b = t_batches.c
        stmt = (
            t_batches.update()
            .where(
                b.id == batch_id,
                b.status == BatchStatus.CANCELLED.value,
                b.cancel_requested_at.is_(None),
            )
            .values(
                status=BatchStatus.RUNNING.value,
                finished_at=None,
                driver=HANDED_OVER,
                driver_expires_at=self.clock(),
            )
            .returning(t_batches)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is not None:
            return _rows.batch_from_row(row)
        await self.get_batch(batch_id)  # NotFoundError when it does not exist
        return None

    async def request_batch_cancel(self, batch_id: str) -> BatchRecord:
        b = t_batches.c
        now = self.clock()
        live = sa.and_(b.driver_expires_at.is_not(None), b.driver_expires_at > now)
        at_once = sa.literal(now, b.finished_at.type)
        # One UPDATE: a batch whose driver is alive gets the request; one without a live driver
        # (nobody would see the request) is cancelled at once.
        stmt = (
            t_batches.update()
            .where(b.id == batch_id, b.status.in_(_OPEN))
            .values(
                cancel_requested_at=now,
                status=sa.case((live, b.status), else_=BatchStatus.CANCELLED.value),
                finished_at=sa.case((live, b.finished_at), else_=at_once),
            )
            .returning(t_batches)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return await self.get_batch(batch_id)
        return _rows.batch_from_row(row)

    async def lapsed_batches(self, *, limit: int = 100) -> list[BatchRecord]:
        check_positive("limit", limit)
        b = t_batches.c
        query = (
            t_batches.select()
            .where(
                b.status.in_(_OPEN),
                b.cancel_requested_at.is_(None),
                b.driver_expires_at.is_not(None),
                b.driver_expires_at <= self.clock(),
            )
            .order_by(b.created_at, b.id)
            .limit(limit)
        )
        async with self._tx() as conn:
            return [_rows.batch_from_row(r) for r in (await conn.execute(query)).mappings()]

    # -- items ---------------------------------------------------------------------------------

    async def add_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
    ) -> int:
        if not items:
            await self.get_batch(batch_id)
            return 0
        now = self.clock()
        rows = [
            {
                "id": new_id(),
                "program": program,
                "program_version": program_version,
                "batch_id": batch_id,
                "batch_index": index,
                "status": ExecutionStatus.PENDING.value,
                "inputs": json_copy(inputs, "inputs"),
                "outputs": None,
                "attempts": 0,
                "created_at": now,
                "usage": {},
            }
            for index, inputs in items
        ]
        insert = self._insert_on_conflict_nothing().returning(t_exec.c.id)
        added = 0
        try:
            async with self._tx(write=True, lock=True) as conn:
                for part in chunks(rows):
                    added += len((await conn.execute(insert, list(part))).all())
        except StorageError as exc:
            raise await self._missing_reference(exc, program, program_version, batch_id) from exc
        return added

    def _insert_on_conflict_nothing(self) -> Any:
        insert = sqlite.insert if self._dialect == "sqlite" else postgresql.insert
        return insert(t_exec).on_conflict_do_nothing(index_elements=["batch_id", "batch_index"])

    async def claim_batch_items(
        self,
        batch_id: str,
        indexes: Sequence[int],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        check_positive("lease_seconds", lease_seconds)
        now = self.clock()
        token = new_token()
        expires = now + timedelta(seconds=lease_seconds)
        if self._writer is not None:
            job = _jobs.claim_items_job(
                batch_id,
                indexes,
                worker_id=worker_id,
                token=token,
                now=now,
                expires=expires,
                retry_failed=retry_failed,
            )
            found = await self._writer.run(job)
            return {index: (eid, token) for index, eid in found.items()}
        async with self._tx(write=True, lock=True) as conn:
            return await self._claim_in(
                conn, batch_id, indexes, worker_id, token, now, expires, retry_failed
            )

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
        check_positive("lease_seconds", lease_seconds)
        if not items:
            await self.get_batch(batch_id)
            return {}
        now = self.clock()
        token = new_token()
        expires = now + timedelta(seconds=lease_seconds)
        if self._writer is not None:
            # Building the job converts every payload, so a bad one fails before any write.
            job = _jobs.add_and_claim_job(
                batch_id,
                program,
                program_version,
                items,
                new_id,
                worker_id=worker_id,
                token=token,
                now=now,
                expires=expires,
                retry_failed=retry_failed,
            )
            try:
                found = await self._writer.run(job)
            except StorageError as exc:
                raise await self._missing_reference(
                    exc, program, program_version, batch_id
                ) from exc
            return {index: (eid, token) for index, eid in found.items()}
        rows = [
            {
                "id": new_id(),
                "program": program,
                "program_version": program_version,
                "batch_id": batch_id,
                "batch_index": index,
                "status": _RUNNING,
                "inputs": json_copy(inputs, "inputs"),
                "outputs": None,
                "attempts": 1,
                "created_at": now,
                "started_at": now,
                "usage": {},
                "worker_id": worker_id,
                "lease_token": token,
                "lease_expires_at": expires,
            }
            for index, inputs in items
        ]
        c = t_exec.c
        # DO NOTHING skips the indexes that already have an execution (and a repeated index
        # after its first row); RETURNING names the rows that went in.
        insert = self._insert_on_conflict_nothing().returning(c.batch_index, c.id)
        claimed: dict[int, tuple[str, str]] = {}
        try:
            async with self._tx(write=True, lock=True) as conn:
                for part in chunks(rows):
                    result = await conn.execute(insert, list(part))
                    claimed.update((index, (eid, token)) for index, eid in result.all())
                rest = [row["batch_index"] for row in rows if row["batch_index"] not in claimed]
                if rest:
                    claimed.update(
                        await self._claim_in(
                            conn, batch_id, rest, worker_id, token, now, expires, retry_failed
                        )
                    )
        except StorageError as exc:
            raise await self._missing_reference(exc, program, program_version, batch_id) from exc
        return claimed

    async def _claim_in(
        self,
        conn: AsyncConnection,
        batch_id: str,
        indexes: Iterable[int],
        worker_id: str,
        token: str,
        now: datetime,
        expires: datetime,
        retry_failed: bool,
    ) -> dict[int, tuple[str, str]]:
        """Claim the claimable items at ``indexes`` under ``token``, inside ``conn``'s
        transaction; a claimed failed or cancelled item leaves that count of its batch."""
        c = t_exec.c
        claimed: dict[int, tuple[str, str]] = {}
        left: Counter[str] = Counter()
        for part in chunks(sorted(set(indexes))):
            query = sa.select(c.id, c.batch_index, c.status, c.lease_expires_at).where(
                c.batch_id == batch_id, c.batch_index.in_(part)
            )
            if self._dialect == "postgresql":
                query = query.with_for_update()
            rows = (await conn.execute(query)).all()
            chosen = [
                row
                for row in rows
                if claimable(ExecutionStatus(row.status), row.lease_expires_at, now, retry_failed)
            ]
            if not chosen:
                continue
            await conn.execute(
                t_exec.update()
                .where(c.id.in_([row.id for row in chosen]))
                .values(
                    status=_RUNNING,
                    started_at=now,
                    attempts=c.attempts + 1,
                    worker_id=worker_id,
                    lease_token=token,
                    lease_expires_at=expires,
                )
            )
            for row in chosen:
                claimed[row.batch_index] = (row.id, token)
                left[row.status] += 1
        if left[ExecutionStatus.FAILED] or left[ExecutionStatus.CANCELLED]:
            b = t_batches.c
            await conn.execute(
                t_batches.update()
                .where(b.id == batch_id)
                .values(
                    failed=b.failed - left[ExecutionStatus.FAILED],
                    cancelled=b.cancelled - left[ExecutionStatus.CANCELLED],
                )
            )
        return claimed

    async def finish_executions(self, requests: Sequence[FinishRequest]) -> list[bool]:
        if not requests:
            return []
        if self._writer is not None:
            for r in requests:
                check_terminal(r.status)
            # Building the job converts every payload, so a bad one fails before any write.
            job = _jobs.finish_many_job(requests, _jobs.ts(self.clock()))
            return await self._writer.run(job)
        check_requests(requests)
        c = t_exec.c
        written = [False] * len(requests)
        async with self._tx(write=True, lock=True) as conn:
            held: dict[str, Any] = {}
            ids = sorted({r.execution_id for r in requests})
            for part in chunks(ids):
                query = sa.select(
                    c.id, c.lease_token, c.program, c.program_version, c.batch_id
                ).where(c.id.in_(part), c.status == _RUNNING)
                if self._dialect == "postgresql":
                    query = query.with_for_update()
                held.update((row.id, row) for row in (await conn.execute(query)).all())
            now = self.clock()
            updates: list[dict[str, Any]] = []
            step_rows: list[dict[str, Any]] = []
            attempt_rows: list[dict[str, Any]] = []
            programs: dict[tuple[str, int], ProgramDeltas] = {}
            batches: dict[str, BatchDeltas] = {}
            for i, r in enumerate(requests):
                row = held.get(r.execution_id)
                if row is None or row.lease_token != r.lease_token:
                    continue
                del held[r.execution_id]  # the same execution twice: only the first one writes
                written[i] = True
                updates.append(_finish_params(r, now))
                step_rows.extend(_rows.step_rows(r.execution_id, r.steps))
                attempt_rows.extend(_rows.attempt_rows(r.execution_id, r.attempts))
                if counts_toward_program(r.status, r.bump_counters):
                    key = (row.program, row.program_version)
                    programs.setdefault(key, ProgramDeltas()).add(r.status, r.duration_ms)
                if row.batch_id is not None:
                    batches.setdefault(row.batch_id, BatchDeltas()).add(
                        r.status, r.cost_usd, r.rate_limited_ms
                    )
            if updates:
                await conn.execute(_FINISH_BY_ID, updates)
            await _insert_children(conn, step_rows, attempt_rows)
            await _apply_deltas(conn, programs, batches)
        return written

    async def heartbeat_lease(self, lease_token: str, lease_seconds: float) -> int:
        check_positive("lease_seconds", lease_seconds)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        if self._writer is not None:
            job = _jobs.heartbeat_lease_job(lease_token, expires)
            return await self._writer.run(job, atomic=True)  # one UPDATE
        stmt = (
            t_exec.update()
            .where(t_exec.c.lease_token == lease_token, t_exec.c.status == _RUNNING)
            .values(lease_expires_at=expires)
        )
        async with self._tx(write=True) as conn:
            return int((await conn.execute(stmt)).rowcount)

    async def batch_item_states(self, batch_id: str) -> dict[str, int]:
        await self.get_batch(batch_id)
        c = t_exec.c
        query = (
            sa.select(c.status, sa.func.count()).where(c.batch_id == batch_id).group_by(c.status)
        )
        async with self._tx() as conn:
            return {status: int(n) for status, n in (await conn.execute(query)).all()}

    async def iter_batch_results(
        self, batch_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[ExecutionRecord]:
        check_positive("chunk", chunk)
        await self.get_batch(batch_id)
        c = t_exec.c
        last = -1
        while True:
            # Keyset paging on the unique (batch_id, batch_index) index: each chunk is one
            # short read, and nothing but the current chunk is held.
            query = (
                t_exec.select()
                .where(c.batch_id == batch_id, c.batch_index > last)
                .order_by(c.batch_index)
                .limit(chunk)
            )
            async with self._tx() as conn:
                page = [_rows.execution_from_row(r) for r in (await conn.execute(query)).mappings()]
            for record in page:
                yield record
            if len(page) < chunk:
                return
            assert page[-1].batch_index is not None
            last = page[-1].batch_index


def _finish_params(r: FinishRequest, now: datetime) -> dict[str, Any]:
    return {
        "b_id": r.execution_id,
        "b_status": r.status.value,
        "b_outputs": r.outputs,
        "b_error_code": r.error_code,
        "b_error_message": r.error_message,
        "b_usage": r.usage or {},
        "b_duration_ms": r.duration_ms,
        "b_backend": r.backend,
        "b_cost_usd": r.cost_usd,
        "b_finished_at": now,
    }


_FINISH_BY_ID = (
    t_exec.update()
    .where(t_exec.c.id == sa.bindparam("b_id"))
    .values(
        status=sa.bindparam("b_status"),
        outputs=sa.bindparam("b_outputs", type_=JSON),
        error_code=sa.bindparam("b_error_code"),
        error_message=sa.bindparam("b_error_message"),
        usage=sa.bindparam("b_usage", type_=JSON),
        duration_ms=sa.bindparam("b_duration_ms", type_=sa.Float()),
        backend=sa.bindparam("b_backend"),
        cost_usd=sa.bindparam("b_cost_usd", type_=sa.Float()),
        finished_at=sa.bindparam("b_finished_at", type_=t_exec.c.finished_at.type),
        lease_token=None,
        lease_expires_at=None,
    )
)


async def _insert_children(
    conn: AsyncConnection, step_rows: list[dict[str, Any]], attempt_rows: list[dict[str, Any]]
) -> None:
    if step_rows:
        await conn.execute(t_steps.insert(), step_rows)
    if attempt_rows:
        await conn.execute(t_attempts.insert(), attempt_rows)


async def _apply_deltas(
    conn: AsyncConnection,
    programs: Mapping[tuple[str, int], ProgramDeltas],
    batches: Mapping[str, BatchDeltas],
) -> None:
    p = t_programs.c
    for (name, version), d in programs.items():
        await conn.execute(
            t_programs.update()
            .where(p.name == name, p.version == version)
            .values(
                execution_count=p.execution_count + d.executions,
                success_count=p.success_count + d.successes,
                failure_count=p.failure_count + d.failures,
                total_duration_ms=p.total_duration_ms + d.duration_ms,
            )
        )
    b = t_batches.c
    for batch_id, delta in batches.items():
        await conn.execute(
            t_batches.update()
            .where(b.id == batch_id)
            .values(
                completed=b.completed + delta.completed,
                failed=b.failed + delta.failed,
                cancelled=b.cancelled + delta.cancelled,
                cost_usd=b.cost_usd + delta.cost_usd,
                rate_limited_s=b.rate_limited_s + delta.rate_limited_s,
            )
        )

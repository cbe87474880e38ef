"""Executions, leases, steps and attempts in SQL (the ``executions``, ``steps`` and ``attempts``
tables).

Writes after a claim carry the lease token in their ``WHERE`` clause, so the database itself
refuses a worker that lost its lease; program counters are ``SET n = n + 1`` updates in the same
transaction. On SQLite, starting and finishing an execution (and recording its steps while it
runs) go to the writer thread (:mod:`dspex.store._sqlite_jobs`), which shares commits between
concurrent callers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dspex.errors import (
    DspexError,
    ExecutionCancelledError,
    LeaseLostError,
    NotFoundError,
    ProgramStateError,
    StorageError,
)
from dspex.records import (
    AttemptRecord,
    ExecutionFilter,
    ExecutionRecord,
    ExecutionRecordPage,
    ExecutionStatus,
    FinishRequest,
    StepRecord,
    UsageMap,
    new_id,
    new_token,
)
from dspex.store import _rows
from dspex.store import _sqlite_jobs as _jobs
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
from dspex.store._sql_core import SqlCore
from dspex.store._sqlite_statements import guarded_start
from dspex.store._sqlite_writer import SqliteWriter
from dspex.store.executions import ExecutionStore
from dspex.store.tables import attempts as t_attempts
from dspex.store.tables import executions as t_exec
from dspex.store.tables import programs as t_programs
from dspex.store.tables import steps as t_steps

__all__ = ["SqlExecutions"]

_RUNNING = ExecutionStatus.RUNNING.value


class SqlExecutions(SqlCore, ExecutionStore):
    """:class:`~dspex.store.executions.ExecutionStore` in SQLite or PostgreSQL."""

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
        check_positive("lease_seconds", lease_seconds)
        record = ExecutionRecord.started(
            execution_id or new_id(),
            program,
            program_version,
            inputs,
            self.clock(),
            worker_id=worker_id,
            lease_token=new_token(),
            lease_seconds=lease_seconds,
            batch_id=batch_id,
            batch_index=batch_index,
        )
        if self._writer is not None:
            await self._start_in_writer(
                self._writer, record, require_ready=require_ready, require_latest=require_latest
            )
        else:
            await self._start_in_tx(
                record, require_ready=require_ready, require_latest=require_latest
            )
        if _needs_reload(inputs):
            # What the database holds is a JSON round trip of what we were given.
            return replace(record, inputs=json_copy(inputs, "inputs"))
        return record

    async def _start_in_writer(
        self,
        writer: SqliteWriter,
        record: ExecutionRecord,
        *,
        require_ready: bool,
        require_latest: bool,
    ) -> None:
        name, version = record.program, record.program_version
        job = _jobs.start_job(record, require_ready=require_ready, require_latest=require_latest)
        try:
            inserted = await writer.run(job, atomic=True)  # one INSERT
        except StorageError as exc:
            raise await self._missing_reference(exc, name, version, record.batch_id) from exc
        if inserted != 1:
            async with self._tx() as conn:
                await self._refuse_start(conn, name, version, require_ready)

    async def _start_in_tx(
        self, record: ExecutionRecord, *, require_ready: bool, require_latest: bool
    ) -> None:
        program, program_version = record.program, record.program_version
        values = {column.name: getattr(record, column.name) for column in t_exec.columns}
        values["status"] = _RUNNING
        try:
            async with self._tx(write=True) as conn:
                if not (require_ready or require_latest):
                    await conn.execute(t_exec.insert(), values)
                    return
                keys = {"p_name": program, "p_version": program_version}
                if require_latest:
                    keys |= {"n_name": program, "m_name": program, "n_version": program_version}
                stmt = guarded_start(require_ready, require_latest)
                if (await conn.execute(stmt, values | keys)).rowcount != 1:
                    await self._refuse_start(conn, program, program_version, require_ready)
        except StorageError as exc:
            raise await self._missing_reference(
                exc, program, program_version, record.batch_id
            ) from exc

    async def _refuse_start(
        self, conn: AsyncConnection, program: str, version: int, require_ready: bool
    ) -> None:
        """Raise why a guarded start created nothing (the rare path: one more read)."""
        record = await self._program(conn, program, version)
        default = await self._default_program(conn, program)
        check_startable(record, default, require_ready=require_ready)
        raise ProgramStateError(  # pragma: no cover - the state changed between the two reads
            f"program {program!r} v{version} changed while starting an execution; try again"
        )

    async def _lease_lost(self, conn: AsyncConnection, execution_id: str) -> DspexError:
        if not await self._exists(conn, t_exec, id=execution_id):
            return NotFoundError(f"execution {execution_id!r} does not exist")
        return LeaseLostError(f"execution {execution_id!r} is no longer held by this lease")

    def _held(self, execution_id: str, lease_token: str) -> sa.ColumnElement[bool]:
        return sa.and_(
            t_exec.c.id == execution_id,
            t_exec.c.lease_token == lease_token,
            t_exec.c.status == _RUNNING,
        )

    async def heartbeat(
        self, execution_id: str, lease_token: str, lease_seconds: float
    ) -> datetime:
        check_positive("lease_seconds", lease_seconds)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        stmt = (
            t_exec.update()
            .where(self._held(execution_id, lease_token))
            .values(lease_expires_at=expires)
            .returning(t_exec.c.cancel_requested_at)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).first()
            if row is None:
                raise await self._lease_lost(conn, execution_id)
        if row[0] is not None:
            raise ExecutionCancelledError(f"execution {execution_id!r} was asked to cancel")
        return expires

    async def request_execution_cancel(self, execution_id: str) -> ExecutionRecord:
        e = t_exec.c
        now = self.clock()
        live = sa.and_(
            e.status == _RUNNING, e.lease_expires_at.is_not(None), e.lease_expires_at > now
        )
        at_once = sa.literal(now, e.finished_at.type)
        # One UPDATE: a run whose holder is alive gets the request (it sees it on its next
        # heartbeat); one nobody holds (pending, or its lease expired) is cancelled at once.
        stmt = (
            t_exec.update()
            .where(e.id == execution_id, e.status.in_([ExecutionStatus.PENDING.value, _RUNNING]))
            .values(
                cancel_requested_at=now,
                status=sa.case((live, e.status), else_=ExecutionStatus.CANCELLED.value),
                error_code=sa.case((live, e.error_code), else_=CANCELLED_CODE),
                error_message=sa.case((live, e.error_message), else_=CANCELLED_MESSAGE),
                finished_at=sa.case((live, e.finished_at), else_=at_once),
                lease_token=sa.case((live, e.lease_token), else_=sa.null()),
                lease_expires_at=sa.case((live, e.lease_expires_at), else_=sa.null()),
            )
            .returning(t_exec)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            return await self.get_execution(execution_id)
        return _rows.execution_from_row(row)

    async def record_steps(
        self,
        execution_id: str,
        lease_token: str,
        steps: Sequence[StepRecord],
        attempts: Sequence[AttemptRecord] = (),
    ) -> ExecutionRecord:
        if self._writer is not None:
            job = _jobs.record_steps_job(execution_id, lease_token, steps, attempts)
            return _written(execution_id, await self._writer.run(job))
        c = t_exec.c
        # Locks the row: a finish (or another record) of the same execution waits for this one.
        held = (
            sa.select(c.live_steps, c.live_attempts)
            .where(self._held(execution_id, lease_token))
            .with_for_update()
        )
        async with self._tx(write=True) as conn:
            live = (await conn.execute(held)).first()
            if live is None:
                raise await self._lease_lost(conn, execution_id)
            live_steps, live_attempts = live
            await _insert_children(conn, execution_id, steps[live_steps:], attempts[live_attempts:])
            stmt = (
                t_exec.update()
                .where(c.id == execution_id)
                .values(
                    live_steps=max(live_steps, len(steps)),
                    live_attempts=max(live_attempts, len(attempts)),
                )
                .returning(t_exec)
            )
            row = (await conn.execute(stmt)).mappings().one()
        return _rows.execution_from_row(row)

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
        check_terminal(status)
        if self._writer is not None:
            request = FinishRequest(
                execution_id,
                lease_token,
                status,
                outputs=outputs,
                error_code=error_code,
                error_message=error_message,
                usage=usage or {},
                duration_ms=duration_ms,
                backend=backend,
                steps=tuple(steps),
                attempts=tuple(attempts),
                bump_counters=bump_counters,
                cost_usd=cost_usd,
            )
            finished_at = _jobs.ts(self.clock())
            row = await self._writer.run(_jobs.finish_one_job(request, finished_at))
            return _written(execution_id, row)
        stmt = (
            t_exec.update()
            .where(self._held(execution_id, lease_token))
            .values(
                status=status.value,
                outputs=outputs,
                error_code=error_code,
                error_message=error_message,
                usage=usage or {},
                duration_ms=duration_ms,
                backend=backend,
                cost_usd=cost_usd,
                finished_at=self.clock(),
                lease_token=None,
                lease_expires_at=None,
            )
            .returning(t_exec)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is None:
                raise await self._lease_lost(conn, execution_id)
            record = _rows.execution_from_row(row)
            # the first steps and attempts may have been recorded while it ran (record_steps)
            await _insert_children(
                conn, execution_id, steps[record.live_steps :], attempts[record.live_attempts :]
            )
            if counts_toward_program(status, bump_counters):
                await _count_execution(conn, record, status, duration_ms)
        return record

    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        async with self._tx() as conn:
            result = await conn.execute(t_exec.select().where(t_exec.c.id == execution_id))
            row = result.mappings().first()
        if row is None:
            raise NotFoundError(f"execution {execution_id!r} does not exist")
        return _rows.execution_from_row(row)

    async def list_executions(
        self,
        filters: ExecutionFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionRecordPage:
        check_positive("limit", limit)
        f = filters or ExecutionFilter()
        c = t_exec.c
        query = t_exec.select()
        if f.program is not None:
            query = query.where(c.program == f.program)
        if f.program_version is not None:
            query = query.where(c.program_version == f.program_version)
        if f.statuses:
            query = query.where(c.status.in_([s.value for s in f.statuses]))
        if f.batch_id is not None:
            query = query.where(c.batch_id == f.batch_id)
        if f.created_after is not None:
            query = query.where(c.created_at >= f.created_after)
        if f.created_before is not None:
            query = query.where(c.created_at < f.created_before)
        if cursor:
            created, last_id = decode_cursor(cursor)
            query = query.where(
                sa.or_(c.created_at < created, sa.and_(c.created_at == created, c.id < last_id))
            )
        query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
        async with self._tx() as conn:
            items = [_rows.execution_from_row(r) for r in (await conn.execute(query)).mappings()]
        more = len(items) > limit
        page = items[:limit]
        return ExecutionRecordPage(
            page, encode_cursor(page[-1].created_at, page[-1].id) if more else None
        )

    async def list_steps(self, execution_id: str) -> list[StepRecord]:
        query = t_steps.select().where(t_steps.c.execution_id == execution_id)
        async with self._tx() as conn:
            result = await conn.execute(query.order_by(t_steps.c.id))
            return [_rows.step_from_row(r) for r in result.mappings()]

    async def list_attempts(self, execution_id: str) -> list[AttemptRecord]:
        query = t_attempts.select().where(t_attempts.c.execution_id == execution_id)
        async with self._tx() as conn:
            result = await conn.execute(query.order_by(t_attempts.c.id))
            return [_rows.attempt_from_row(r) for r in result.mappings()]

    async def list_steps_for_program(
        self, name: str, *, version: int | None = None, limit: int = 1000
    ) -> list[StepRecord]:
        check_positive("limit", limit)
        query = (
            sa.select(t_steps)
            .join(t_exec, t_exec.c.id == t_steps.c.execution_id)
            .where(t_exec.c.program == name)
        )
        if version is not None:
            query = query.where(t_exec.c.program_version == version)
        query = query.order_by(t_steps.c.id.desc()).limit(limit)
        async with self._tx() as conn:
            return [_rows.step_from_row(r) for r in (await conn.execute(query)).mappings()]


def _written(execution_id: str, row: tuple[Any, ...] | bool | None) -> ExecutionRecord:
    """The record a writer job wrote under a lease: ``None`` when the lease was not held,
    ``False`` when the execution does not exist."""
    if row is None:
        raise LeaseLostError(f"execution {execution_id!r} is no longer held by this lease")
    if not isinstance(row, tuple):
        raise NotFoundError(f"execution {execution_id!r} does not exist")
    return _jobs.execution_from_tuple(row)


async def _insert_children(
    conn: AsyncConnection,
    execution_id: str,
    steps: Iterable[StepRecord],
    attempts: Iterable[AttemptRecord],
) -> None:
    step_rows = _rows.step_rows(execution_id, steps)
    if step_rows:
        await conn.execute(t_steps.insert(), step_rows)
    attempt_rows = _rows.attempt_rows(execution_id, attempts)
    if attempt_rows:
        await conn.execute(t_attempts.insert(), attempt_rows)


async def _count_execution(
    conn: AsyncConnection,
    record: ExecutionRecord,
    status: ExecutionStatus,
    duration_ms: float | None,
) -> None:
    """Count one completed or failed execution on its program version."""
    c = t_programs.c
    succeeded = status is ExecutionStatus.COMPLETED
    await conn.execute(
        t_programs.update()
        .where(c.name == record.program, c.version == record.program_version)
        .values(
            execution_count=c.execution_count + 1,
            success_count=c.success_count + int(succeeded),
            failure_count=c.failure_count + int(not succeeded),
            total_duration_ms=c.total_duration_ms + (duration_ms or 0.0),
        )
    )


def _needs_reload(*payloads: Any) -> bool:
    """Whether a JSON round trip could change a payload (tuples, non-string keys…).

    Plain dicts of str keys with str/int/float/bool/None/list/dict values come back equal, so
    the fast path can return what it was given instead of reading the row back.
    """
    return not all(_json_stable(p) for p in payloads)


def _json_stable(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list):
        return all(_json_stable(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_stable(v) for k, v in value.items())
    return False

"""The SQL store: SQLite (embedded default) and PostgreSQL through SQLAlchemy 2 async.

Each public method is one short transaction. Writes after a claim carry the lease token in their
``WHERE`` clause, so the database itself refuses a worker that lost its lease; counters are
``SET n = n + 1`` updates, so concurrent writers never lose a count.

On SQLite the hot writes (``start_execution``, ``finish_execution`` and the bulk batch operations)
skip SQLAlchemy: they go to one writer thread (:mod:`dspex.store._sqlite_writer`) that commits
everything queued at once, each call inside its own SAVEPOINT, so calls from many tasks share a
commit while a failing or lease-lost call still changes nothing. Reads stay on SQLAlchemy.
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
    ProgramRecord,
    ProgramStatus,
    StepRecord,
    UsageMap,
    new_id,
    new_token,
)
from dspex.store import _rows
from dspex.store import _sqlite_sql as _lite
from dspex.store._maintenance_sql import SqlMaintenance
from dspex.store._sql_bulk import SqlBulk
from dspex.store._sqlite_writer import SqliteWriter
from dspex.store.base import (
    check_positive,
    check_startable,
    check_terminal,
    counts_toward_program,
    decode_cursor,
    encode_cursor,
    json_copy,
)
from dspex.store.tables import attempts as t_attempts
from dspex.store.tables import executions as t_exec
from dspex.store.tables import programs as t_programs
from dspex.store.tables import steps as t_steps

__all__ = ["SqlStore"]

_RUNNING = ExecutionStatus.RUNNING.value
_PUT_PROGRAM_TRIES = 5


class SqlStore(SqlMaintenance, SqlBulk):
    """A :class:`~dspex.store.base.Store` in SQLite or PostgreSQL.

    Args:
        url: ``sqlite:///path/to/file.db`` or ``postgresql://user@host/db`` (async drivers are
            chosen automatically).
        clock: the current UTC time (inject one in tests).
        auto_upgrade: migrate the schema in :meth:`initialize`. Default: yes for SQLite (the
            embedded database upgrades itself on first use), no for PostgreSQL, where
            :meth:`initialize` only checks that the schema is current.
        schema: PostgreSQL only: the schema to work in.
        busy_timeout_ms: SQLite only: how long a writer waits for the write lock.
        pool_size: connections kept open.

    Example:
        >>> store = SqlStore("sqlite:///.dspex/dspex.db")  # doctest: +SKIP
        >>> async with store: ...  # doctest: +SKIP
    """

    # -- programs ------------------------------------------------------------------------------

    async def put_program(self, name: str, spec: dict[str, Any], spec_hash: str) -> ProgramRecord:
        for _ in range(_PUT_PROGRAM_TRIES):
            try:
                return await self._put_program_once(name, spec, spec_hash)
            except StorageError as exc:
                # Another writer registered the same next version first: look again.
                if not isinstance(exc.__cause__, sa.exc.IntegrityError):
                    raise
        raise StorageError(f"could not register program {name!r}: too many concurrent writers")

    async def _put_program_once(
        self, name: str, spec: dict[str, Any], spec_hash: str
    ) -> ProgramRecord:
        async with self._tx(write=True, lock=True) as conn:
            latest = await self._latest_program(conn, name)
            if latest is not None and latest.spec_hash == spec_hash:
                return latest
            now = self.clock()
            values = {
                "name": name,
                "version": latest.version + 1 if latest else 1,
                "spec": spec,
                "spec_hash": spec_hash,
                "status": ProgramStatus.DRAFT.value,
                "error": None,
                "execution_count": 0,
                "success_count": 0,
                "failure_count": 0,
                "total_duration_ms": 0.0,
                "created_at": now,
                "updated_at": now,
            }
            result = await conn.execute(t_programs.insert().values(**values).returning(t_programs))
            return _rows.program_from_row(result.mappings().one())

    async def _latest_program(self, conn: AsyncConnection, name: str) -> ProgramRecord | None:
        query = (
            t_programs.select()
            .where(t_programs.c.name == name)
            .order_by(t_programs.c.version.desc())
            .limit(1)
        )
        row = (await conn.execute(query)).mappings().first()
        return _rows.program_from_row(row) if row is not None else None

    async def _program(
        self, conn: AsyncConnection, name: str, version: int | None, *, lock: bool = False
    ) -> ProgramRecord:
        if version is None:
            found = await self._latest_program(conn, name)
            if found is None:
                raise NotFoundError(f"program {name!r} does not exist")
            return found
        query = t_programs.select().where(
            t_programs.c.name == name, t_programs.c.version == version
        )
        row = (await conn.execute(query.with_for_update() if lock else query)).mappings().first()
        if row is None:
            raise NotFoundError(f"program {name!r} has no version {version}")
        return _rows.program_from_row(row)

    async def get_program(self, name: str, version: int | None = None) -> ProgramRecord:
        async with self._tx() as conn:
            return await self._program(conn, name, version)

    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramRecord]:
        query = t_programs.select().order_by(t_programs.c.name, t_programs.c.version)
        if not all_versions:
            newest = (
                sa.select(t_programs.c.name, sa.func.max(t_programs.c.version).label("v"))
                .group_by(t_programs.c.name)
                .subquery()
            )
            query = query.join(
                newest,
                sa.and_(newest.c.name == t_programs.c.name, newest.c.v == t_programs.c.version),
            )
        async with self._tx() as conn:
            return [_rows.program_from_row(r) for r in (await conn.execute(query)).mappings()]

    async def set_program_status(
        self,
        name: str,
        version: int,
        status: ProgramStatus,
        *,
        error: str | None = None,
        expected: ProgramStatus | None = None,
    ) -> ProgramRecord:
        async with self._tx(write=True, lock=True) as conn:
            current = await self._program(conn, name, version, lock=True)
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
            stmt = (
                t_programs.update()
                .where(
                    t_programs.c.name == name,
                    t_programs.c.version == version,
                    t_programs.c.status == current.status.value,
                )
                .values(
                    status=status.value,
                    error=error if status is ProgramStatus.ERROR else None,
                    updated_at=self.clock(),
                )
                .returning(t_programs)
            )
            return _rows.program_from_row((await conn.execute(stmt)).mappings().one())

    async def bump_program_counters(
        self, name: str, version: int, *, succeeded: bool, duration_ms: float
    ) -> None:
        async with self._tx(write=True) as conn:
            if not await self._bump(conn, name, version, succeeded, duration_ms):
                raise NotFoundError(f"program {name!r} has no version {version}")

    async def _bump(
        self,
        conn: AsyncConnection,
        name: str,
        version: int,
        succeeded: bool,
        duration_ms: float | None,
    ) -> bool:
        c = t_programs.c
        stmt = (
            t_programs.update()
            .where(c.name == name, c.version == version)
            .values(
                execution_count=c.execution_count + 1,
                success_count=c.success_count + int(succeeded),
                failure_count=c.failure_count + int(not succeeded),
                total_duration_ms=c.total_duration_ms + (duration_ms or 0.0),
            )
        )
        return (await conn.execute(stmt)).rowcount == 1

    # -- executions ----------------------------------------------------------------------------

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
        values = {
            "id": execution_id or new_id(),
            "program": program,
            "program_version": program_version,
            "batch_id": batch_id,
            "batch_index": batch_index,
            "status": ExecutionStatus.PENDING.value,
            "inputs": inputs,
            "outputs": None,
            "attempts": 0,
            "created_at": self.clock(),
            "usage": {},
        }
        try:
            async with self._tx(write=True) as conn:
                result = await conn.execute(t_exec.insert().values(**values).returning(t_exec))
                return _rows.execution_from_row(result.mappings().one())
        except StorageError as exc:
            raise await self._missing_reference(exc, program, program_version, batch_id) from exc

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
        now = self.clock()
        record = ExecutionRecord(
            id=execution_id or new_id(),
            program=program,
            program_version=program_version,
            status=ExecutionStatus.RUNNING,
            inputs=inputs,
            outputs=None,
            error_code=None,
            error_message=None,
            attempts=1,
            created_at=now,
            started_at=now,
            finished_at=None,
            duration_ms=None,
            usage={},
            backend=None,
            batch_id=batch_id,
            batch_index=batch_index,
            worker_id=worker_id,
            lease_token=new_token(),
            lease_expires_at=now + timedelta(seconds=lease_seconds),
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
        params = _lite.execution_params(record)
        name, version = record.program, record.program_version
        if require_ready or require_latest:
            sql = _lite.guarded_insert(require_ready, require_latest)
            params += (name, version) + ((name, version) if require_latest else ())
        else:
            sql = _lite.INSERT_EXECUTION
        try:
            inserted = await writer.run(_lite.start_job(sql, params))
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
                else:
                    stmt = _guarded_insert(
                        values, program, program_version, require_ready, require_latest
                    )
                    if (await conn.execute(stmt)).rowcount != 1:
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
        latest = await self._latest_program(conn, program)
        check_startable(record, latest, require_ready=require_ready)
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

    async def claim_execution(self, execution_id: str, worker_id: str, lease_seconds: float) -> str:
        check_positive("lease_seconds", lease_seconds)
        now = self.clock()
        token = new_token()
        c = t_exec.c
        stmt = (
            t_exec.update()
            .where(
                c.id == execution_id,
                sa.or_(
                    c.status == ExecutionStatus.PENDING.value,
                    sa.and_(c.status == _RUNNING, c.lease_expires_at < now),
                ),
            )
            .values(
                status=_RUNNING,
                started_at=now,
                attempts=c.attempts + 1,
                worker_id=worker_id,
                lease_token=token,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
        )
        async with self._tx(write=True) as conn:
            if (await conn.execute(stmt)).rowcount == 1:
                return token
            if not await self._exists(conn, t_exec, id=execution_id):
                raise NotFoundError(f"execution {execution_id!r} does not exist")
        raise LeaseLostError(f"execution {execution_id!r} is not pending and cannot be claimed")

    async def heartbeat(
        self, execution_id: str, lease_token: str, lease_seconds: float
    ) -> datetime:
        check_positive("lease_seconds", lease_seconds)
        expires = self.clock() + timedelta(seconds=lease_seconds)
        stmt = (
            t_exec.update()
            .where(self._held(execution_id, lease_token))
            .values(lease_expires_at=expires)
        )
        async with self._tx(write=True) as conn:
            if (await conn.execute(stmt)).rowcount != 1:
                raise await self._lease_lost(conn, execution_id)
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
            )
            finished_at = _lite.ts(self.clock())
            row = await self._writer.run(_lite.finish_one_job(request, finished_at))
            if row is None:
                raise LeaseLostError(f"execution {execution_id!r} is no longer held by this lease")
            if row is False:
                raise NotFoundError(f"execution {execution_id!r} does not exist")
            assert isinstance(row, tuple)
            return _lite.execution_from_tuple(row)
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
            await self._insert_children(conn, execution_id, steps, attempts)
            if counts_toward_program(status, bump_counters):
                succeeded = status is ExecutionStatus.COMPLETED
                await self._bump(
                    conn, record.program, record.program_version, succeeded, duration_ms
                )
        return record

    async def _insert_children(
        self,
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
        check_terminal(status)
        now = self.clock()
        record = ExecutionRecord(
            id=execution_id or new_id(),
            program=program,
            program_version=program_version,
            status=status,
            inputs=inputs,
            outputs=outputs,
            error_code=error_code,
            error_message=error_message,
            attempts=1,
            created_at=started_at or now,
            started_at=started_at or now,
            finished_at=finished_at or now,
            duration_ms=duration_ms,
            usage=usage or {},
            backend=backend,
            batch_id=batch_id,
            batch_index=batch_index,
            worker_id=worker_id,
            lease_token=None,
            lease_expires_at=None,
        )
        values = {column.name: getattr(record, column.name) for column in t_exec.columns}
        values["status"] = status.value
        try:
            async with self._tx(write=True) as conn:
                await conn.execute(t_exec.insert(), values)
                await self._insert_children(conn, record.id, steps, attempts)
                if counts_toward_program(status, bump_counters):
                    succeeded = status is ExecutionStatus.COMPLETED
                    await self._bump(conn, program, program_version, succeeded, duration_ms)
        except StorageError as exc:
            raise await self._missing_reference(exc, program, program_version, batch_id) from exc
        # What the database holds is a JSON round trip of what we were given.
        return await self.get_execution(record.id) if _needs_reload(inputs, outputs) else record

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

    async def _append(
        self,
        execution_id: str,
        lease_token: str,
        steps: Iterable[StepRecord],
        attempts: Iterable[AttemptRecord],
    ) -> None:
        # A no-op update first: it takes the row lock (PostgreSQL) and checks the lease in the
        # same statement, so a concurrent reclaim cannot slip between check and insert.
        touch = (
            t_exec.update()
            .where(self._held(execution_id, lease_token))
            .values(lease_token=t_exec.c.lease_token)
        )
        async with self._tx(write=True) as conn:
            if (await conn.execute(touch)).rowcount != 1:
                raise await self._lease_lost(conn, execution_id)
            await self._insert_children(conn, execution_id, steps, attempts)

    async def add_steps(
        self, execution_id: str, lease_token: str, steps: Iterable[StepRecord]
    ) -> None:
        await self._append(execution_id, lease_token, steps, ())

    async def add_attempts(
        self, execution_id: str, lease_token: str, attempts: Iterable[AttemptRecord]
    ) -> None:
        await self._append(execution_id, lease_token, (), attempts)

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

    async def find_expired_leases(
        self, now: datetime | None = None, *, limit: int = 100
    ) -> list[ExecutionRecord]:
        check_positive("limit", limit)
        c = t_exec.c
        query = (
            t_exec.select()
            .where(c.status == _RUNNING, c.lease_expires_at < (now or self.clock()))
            .order_by(c.lease_expires_at, c.id)
            .limit(limit)
        )
        async with self._tx() as conn:
            return [_rows.execution_from_row(r) for r in (await conn.execute(query)).mappings()]


def _guarded_insert(
    values: dict[str, Any], program: str, version: int, ready: bool, latest: bool
) -> sa.Executable:
    """``INSERT INTO executions SELECT …`` that inserts only while the program version allows it.

    The condition and the insert are one statement, so a version archived (or superseded) by
    another process a moment earlier can never gain a new execution.
    """
    p = t_programs.c
    conditions = [p.name == program, p.version == version]
    if ready:
        conditions.append(p.status == ProgramStatus.READY.value)
    if latest:
        newer = t_programs.alias("newer")
        conditions.append(~sa.exists().where(newer.c.name == program, newer.c.version > version))
    columns = list(t_exec.columns)
    row = sa.select(*[sa.literal(values[c.name], c.type).label(c.name) for c in columns])
    return t_exec.insert().from_select(
        [c.name for c in columns], row.select_from(t_programs).where(*conditions)
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

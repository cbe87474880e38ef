"""The plumbing of the SQL store: engine, transactions, migrations, and the simple tables.

Split from :mod:`dspex.store.sql` (which adds programs and executions) to keep files small.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from dspex.errors import (
    DspexError,
    NotFoundError,
    StorageError,
)
from dspex.records import (
    BatchRecord,
    BatchStatus,
    BreakerRecord,
    ExecutionRecord,
    SignatureRecord,
    new_id,
    utc_now,
)
from dspex.store import _rows, migrations
from dspex.store._engine import LOCK_OPTION, create_engine, normalize_url, sqlite_target
from dspex.store._sqlite_writer import SqliteWriter
from dspex.store.base import (
    Clock,
    IdKind,
    Store,
    check_positive,
    check_prefix,
)
from dspex.store.tables import batches as t_batches
from dspex.store.tables import breakers as t_breakers
from dspex.store.tables import executions as t_exec
from dspex.store.tables import programs as t_programs
from dspex.store.tables import signatures as t_signatures

__all__ = ["SqlCore"]

# Serialises concurrent `upgrade()` calls against one PostgreSQL database ("dspx" in ASCII).
_MIGRATION_LOCK = 0x64737078


class SqlCore(Store):
    """Engine, transactions and lifecycle shared by :class:`~dspex.store.sql.SqlStore`."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = utc_now,
        auto_upgrade: bool | None = None,
        schema: str | None = None,
        busy_timeout_ms: int = 30_000,
        pool_size: int = 5,
    ) -> None:
        super().__init__(clock=clock)
        self._url = normalize_url(url)
        self._engine = create_engine(
            self._url, schema=schema, busy_timeout_ms=busy_timeout_ms, pool_size=pool_size
        )
        self._locking = self._engine.execution_options(**{LOCK_OPTION: True})
        self._dialect = self._url.get_backend_name()
        target = sqlite_target(self._url) if self._dialect == "sqlite" else None
        # A SQLite file migrates itself, unless it was opened read-only (``mode=ro``).
        embedded = target is not None and not target.read_only
        self._auto_upgrade = embedded if auto_upgrade is None else auto_upgrade
        self._write_lock = asyncio.Lock() if self._dialect == "sqlite" else None
        # SQLite's hot writes skip SQLAlchemy: one writer thread, group commit (see sql.py).
        self._writer: SqliteWriter | None = None
        if target is not None:
            path = target.database if target.path is None else str(target.path)
            self._writer = SqliteWriter(path, busy_timeout_ms=busy_timeout_ms, uri=target.uri)

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect

    @asynccontextmanager
    async def _tx(
        self, *, write: bool = False, lock: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """One transaction; database failures become :class:`StorageError`.

        ``write`` marks transactions that change data: on SQLite they queue on an in-process
        lock, because SQLite has one writer at a time and its busy handler polls with sleeps
        of up to 100 ms, which wrecks throughput when many tasks of one process contend (other
        processes still wait under the busy timeout). ``lock`` is for transactions that read
        before they write: on SQLite they take the write lock up front (see
        :func:`~dspex.store._engine.create_engine`).
        """
        try:
            if write and self._write_lock is not None:
                async with self._write_lock, self._begin(lock) as conn:
                    yield conn
            else:
                async with self._begin(lock) as conn:
                    yield conn
        except DspexError:
            raise
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise StorageError(f"database error: {exc}") from exc

    def _begin(self, lock: bool) -> AbstractAsyncContextManager[AsyncConnection]:
        return (self._locking if lock else self._engine).begin()

    async def _exists(self, conn: AsyncConnection, table: sa.Table, **keys: Any) -> bool:
        query = sa.select(sa.literal(1)).select_from(table)
        for column, value in keys.items():
            query = query.where(table.c[column] == value)
        return (await conn.execute(query.limit(1))).first() is not None

    async def _missing_reference(
        self, exc: StorageError, program: str, version: int, batch_id: str | None
    ) -> DspexError:
        """Name what an insert's foreign key missed, or keep the integrity error as it is."""
        if not isinstance(exc.__cause__, sa.exc.IntegrityError | sqlite3.IntegrityError):
            return exc
        async with self._tx() as conn:
            if not await self._exists(conn, t_programs, name=program, version=version):
                return NotFoundError(f"program {program!r} v{version} does not exist")
            if batch_id is not None and not await self._exists(conn, t_batches, id=batch_id):
                return NotFoundError(f"batch {batch_id!r} does not exist")
        return exc

    # -- lifecycle ---------------------------------------------------------------------------

    async def initialize(self) -> None:
        if self._auto_upgrade:
            await self.upgrade()
            return
        revision = await self.schema_revision()
        if revision is None:
            raise StorageError("the database has no schema yet: run `dspex db upgrade`")
        if revision != migrations.head_revision():
            raise StorageError(
                f"the database schema is at revision {revision!r}, not "
                f"{migrations.head_revision()!r}: run `dspex db upgrade`"
            )

    async def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision`` in one transaction (safe to repeat)."""
        async with self._tx(write=True, lock=True) as conn:
            if self._dialect == "postgresql":
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            await conn.run_sync(migrations.upgrade, revision)

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()  # finishes every queued write first
        await self._engine.dispose()

    async def ping(self) -> float:
        start = time.perf_counter()
        async with self._tx() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return (time.perf_counter() - start) * 1000.0

    async def schema_revision(self) -> str | None:
        async with self._tx() as conn:
            return await conn.run_sync(migrations.current_revision)

    async def is_current(self) -> bool:
        return await self.schema_revision() == migrations.head_revision()

    # -- signatures ----------------------------------------------------------------------------

    async def put_signature(self, name: str, spec: dict[str, Any]) -> SignatureRecord:
        now = self.clock()
        values = {"name": name, "spec": spec, "created_at": now, "updated_at": now}
        async with self._tx(write=True) as conn:
            stmt = self._upsert(t_signatures, values, ["name"], ["spec", "updated_at"])
            await conn.execute(stmt)
            row = await conn.execute(t_signatures.select().where(t_signatures.c.name == name))
            return _rows.signature_from_row(row.mappings().one())

    def _upsert(
        self, table: sa.Table, values: dict[str, Any], keys: list[str], update: list[str]
    ) -> sa.Executable:
        insert = sqlite.insert if self._dialect == "sqlite" else postgresql.insert
        stmt = insert(table).values(**values)
        return stmt.on_conflict_do_update(
            index_elements=keys, set_={c: stmt.excluded[c] for c in update}
        )

    async def get_signature(self, name: str) -> SignatureRecord:
        async with self._tx() as conn:
            result = await conn.execute(t_signatures.select().where(t_signatures.c.name == name))
            row = result.mappings().first()
        if row is None:
            raise NotFoundError(f"signature {name!r} does not exist")
        return _rows.signature_from_row(row)

    async def list_signatures(self) -> list[SignatureRecord]:
        async with self._tx() as conn:
            result = await conn.execute(t_signatures.select().order_by(t_signatures.c.name))
            return [_rows.signature_from_row(r) for r in result.mappings()]

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

    async def match_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> list[str]:
        check_prefix(prefix, limit)
        column = (t_exec if kind == "execution" else t_batches).c.id
        # LIKE (wildcards escaped) is exact in every collation; PostgreSQL reads it from the
        # primary key's index only under the "C" collation, else it scans (about 30 ms a
        # million executions; callers try the exact id first). SQLite's LIKE ignores case and
        # never uses an index: a range on the id (compared bytewise there) reads the index.
        pattern = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
        query = sa.select(column).where(column.like(pattern, escape="/"))
        if self._dialect == "sqlite":
            query = query.where(column >= prefix)
            last = ord(prefix[-1])
            if last < 0xD7FF:
                query = query.where(column < prefix[:-1] + chr(last + 1))
        query = query.order_by(column).limit(limit)
        async with self._tx() as conn:
            return list((await conn.execute(query)).scalars())

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

    async def _update_batch(self, batch_id: str, **values: Any) -> BatchRecord:
        stmt = (
            t_batches.update()
            .where(t_batches.c.id == batch_id)
            .values(**values)
            .returning(t_batches)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise NotFoundError(f"batch {batch_id!r} does not exist")
        return _rows.batch_from_row(row)

    async def update_batch_counts(
        self, batch_id: str, *, completed: int = 0, failed: int = 0, cancelled: int = 0
    ) -> BatchRecord:
        c = t_batches.c
        return await self._update_batch(
            batch_id,
            completed=c.completed + completed,
            failed=c.failed + failed,
            cancelled=c.cancelled + cancelled,
        )

    async def set_batch_status(self, batch_id: str, status: BatchStatus) -> BatchRecord:
        return await self._update_batch(
            batch_id,
            status=status.value,
            finished_at=self.clock() if status.is_terminal else None,
        )

    async def list_batch_executions(self, batch_id: str) -> list[ExecutionRecord]:
        await self.get_batch(batch_id)
        c = t_exec.c
        query = (
            t_exec.select()
            .where(c.batch_id == batch_id)
            .order_by(c.batch_index.asc().nulls_last(), c.created_at, c.id)
        )
        async with self._tx() as conn:
            return [_rows.execution_from_row(r) for r in (await conn.execute(query)).mappings()]

    # -- breakers ------------------------------------------------------------------------------

    async def save_breaker(self, record: BreakerRecord) -> None:
        values = {
            "backend": record.backend,
            "state": record.state,
            "failure_count": record.failure_count,
            "success_count": record.success_count,
            "opened_at": record.opened_at,
            "updated_at": self.clock(),
        }
        update = ["state", "failure_count", "success_count", "opened_at", "updated_at"]
        async with self._tx(write=True) as conn:
            await conn.execute(self._upsert(t_breakers, values, ["backend"], update))

    async def list_breakers(self) -> list[BreakerRecord]:
        async with self._tx() as conn:
            result = await conn.execute(t_breakers.select().order_by(t_breakers.c.backend))
            return [_rows.breaker_from_row(r) for r in result.mappings()]

"""What every noun of the SQL store shares: engine, transactions, migrations, the SQLite writer.

Each noun (``_sql_programs``, ``_sql_executions``, ``_sql_batches``, ``_sql_breakers``,
``_sql_maintenance``) is a mixin over :class:`SqlCore`; :class:`~dspex.store.sql.SqlStore`
puts them together.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dspex.errors import DspexError, NotFoundError, StorageError
from dspex.records import ProgramRecord, utc_now
from dspex.store import _rows, migrations
from dspex.store._engine import LOCK_OPTION, create_engine, normalize_url, sqlite_target
from dspex.store._sqlite_writer import SqliteWriter
from dspex.store.base import Clock
from dspex.store.tables import batches as t_batches
from dspex.store.tables import programs as t_programs
from dspex.store.tables import promotions as t_promotions

__all__ = ["SqlCore"]

# Serialises concurrent `upgrade()` calls against one PostgreSQL database ("dspx" in ASCII).
_MIGRATION_LOCK = 0x64737078


class SqlCore:
    """Engine, transactions and lifecycle shared by the nouns of the SQL store."""

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
        self.clock = clock
        self.schema = schema  # workers in other processes open the same schema
        self._busy_ms = busy_timeout_ms
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
        # SQLite's hot writes go to one writer thread, with group commit (see _sqlite_writer.py).
        self._writer: SqliteWriter | None = None
        # a stdlib connection for point reads on the caller's thread (see _sql_cache.py)
        self._sqlite_path: tuple[str, bool] | None = None
        self._point_reader: sqlite3.Connection | None = None
        self._point_lock = threading.Lock()  # a sqlite3 connection runs one statement at once
        if target is not None:
            path = target.database if target.path is None else str(target.path)
            self._writer = SqliteWriter(path, busy_timeout_ms=busy_timeout_ms, uri=target.uri)
            if path not in ("", ":memory:") and "mode=memory" not in path:
                self._sqlite_path = (path, target.uri)

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

    async def _latest_program(self, conn: AsyncConnection, name: str) -> ProgramRecord | None:
        query = (
            t_programs.select()
            .where(t_programs.c.name == name)
            .order_by(t_programs.c.version.desc())
            .limit(1)
        )
        row = (await conn.execute(query)).mappings().first()
        return _rows.program_from_row(row) if row is not None else None

    async def _current_version(self, conn: AsyncConnection, name: str) -> int | None:
        """The version last promoted, if any."""
        query = (
            sa.select(t_promotions.c.version)
            .where(t_promotions.c.program == name)
            .order_by(t_promotions.c.id.desc())
            .limit(1)
        )
        return (await conn.execute(query)).scalar()

    async def _default_program(self, conn: AsyncConnection, name: str) -> ProgramRecord:
        """The version used when none is named: the current one, else the newest."""
        return await self._program(conn, name, await self._current_version(conn, name))

    async def _program(
        self, conn: AsyncConnection, name: str, version: int | None, *, lock: bool = False
    ) -> ProgramRecord:
        """One version (the newest when ``version`` is ``None``), or :class:`NotFoundError`."""
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

    async def schema_revision(self) -> str | None:
        async with self._tx() as conn:
            return await conn.run_sync(migrations.current_revision)

    async def close(self) -> None:
        if self._point_reader is not None:
            self._point_reader.close()
            self._point_reader = None
        if self._writer is not None:
            await self._writer.close()  # finishes every queued write first
        await self._engine.dispose()

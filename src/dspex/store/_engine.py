"""Building the async SQLAlchemy engine from a database URL, with SQLite tuned for concurrency."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dspex.errors import ConfigError
from dspex.store._sqlite_setup import set_up_async

__all__ = ["LOCK_OPTION", "SqliteTarget", "create_engine", "normalize_url", "sqlite_target"]

LOCK_OPTION = "dspex_lock"

_POSTGRES_SYNC_DRIVERS = {"postgresql", "postgres", "postgresql+psycopg2", "postgresql+pg8000"}
_POSTGRES_ASYNC_DRIVERS = {"postgresql+asyncpg", "postgresql+psycopg"}

# Query keys of a SQLite URL that are arguments of the driver's connect(), not of the URI.
_SQLITE_DRIVER_KEYS = frozenset(
    {"uri", "timeout", "check_same_thread", "isolation_level", "detect_types", "cached_statements"}
)
_TRUE = frozenset({"1", "true", "yes", "on"})


def normalize_url(url: str | sa.URL) -> sa.URL:
    """The async form of a database URL.

    ``sqlite:///path`` becomes ``sqlite+aiosqlite:///path`` and ``postgresql://…`` (or
    ``postgres://…``) becomes ``postgresql+asyncpg://…``; async drivers are kept as given.

    Raises:
        ConfigError: the URL is malformed, names another database, or is an in-memory SQLite
            database (each pooled connection would see its own empty database; use
            ``memory://`` for the in-memory store).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}") from exc
    driver = parsed.drivername
    if driver.split("+", 1)[0] == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("in-memory SQLite is not supported; use 'memory://' instead")
        return parsed.set(drivername="sqlite+aiosqlite")
    if driver in _POSTGRES_SYNC_DRIVERS:
        return parsed.set(drivername="postgresql+asyncpg")
    if driver in _POSTGRES_ASYNC_DRIVERS:
        return parsed
    raise ConfigError(f"unsupported database {driver!r}: use sqlite:///PATH or postgresql://…")


@dataclass(frozen=True, slots=True)
class SqliteTarget:
    """What a SQLite URL opens: a file path, or a ``file:`` URI with its parameters.

    Attributes:
        database: the path, or the URI (``file:PATH?mode=ro…``) when ``uri`` is set.
        uri: open ``database`` as a URI (``sqlite3.connect(..., uri=True)``).
        read_only: the URI opens the database read-only (``mode=ro`` or ``immutable=1``):
            nothing is written, not even the journal mode or a migration.
    """

    database: str
    uri: bool = False
    read_only: bool = False

    @property
    def path(self) -> Path | None:
        """The database file of a plain path (``None`` for a URI: it is used as given)."""
        return None if self.uri else Path(self.database).expanduser()


def sqlite_target(url: sa.URL) -> SqliteTarget:
    """How to open the SQLite database of ``url`` (a URL made by :func:`normalize_url`).

    ``sqlite:///file:PATH?mode=ro&uri=true`` (SQLAlchemy's form) opens ``file:PATH?mode=ro`` as a
    URI; so does any database that starts with ``file:``. Other URLs name a plain file.
    """
    database = url.database or ""
    query = {key: str(value) for key, value in url.query.items()}
    uri = query.get("uri", "").lower() in _TRUE or database.startswith("file:")
    if not uri:
        return SqliteTarget(database)
    if not database.startswith("file:"):
        database = "file:" + quote(database, safe="/")
    params = {k: v for k, v in query.items() if k not in _SQLITE_DRIVER_KEYS}
    if params:
        database += ("&" if "?" in database else "?") + urlencode(params)
    read_only = params.get("mode") == "ro" or params.get("immutable", "").lower() in _TRUE
    return SqliteTarget(database, uri=True, read_only=read_only)


def create_engine(
    url: sa.URL,
    *,
    schema: str | None = None,
    busy_timeout_ms: int = 30_000,
    pool_size: int = 5,
    max_overflow: int = 20,
) -> AsyncEngine:
    """An async engine for a URL made by :func:`normalize_url`.

    SQLite connections get WAL (readers never block the writer), a busy timeout (writers queue
    instead of failing), ``synchronous=NORMAL`` (no fsync per commit; safe with WAL) and foreign
    keys. The driver opens a ``BEGIN IMMEDIATE`` transaction by itself right before the first
    INSERT/UPDATE/DELETE (in the same call, so it costs no extra round trip to the driver's
    thread), and reads outside a transaction run on their own. A transaction that must read
    before it writes uses the ``dspex_lock`` execution option: it starts with an explicit
    ``BEGIN IMMEDIATE``, so the writer takes the lock up front and waits for it under the busy
    timeout, rather than failing mid-transaction when upgrading a read lock. The parent directory
    of the database file is created if missing; a ``file:`` URI is opened as given (see
    :func:`sqlite_target`), and one opened read-only (``mode=ro``) sets no journal mode.

    Args:
        url: the database URL.
        schema: PostgreSQL only: the schema to work in (set as the ``search_path``).
        busy_timeout_ms: SQLite only: how long a writer waits for the lock.
        pool_size: connections kept open.
        max_overflow: extra connections allowed under load.
    """
    kwargs: dict[str, Any] = {"pool_size": pool_size, "max_overflow": max_overflow}
    if url.get_backend_name() == "sqlite":
        target = sqlite_target(url)
        if target.path is not None:
            target.path.parent.mkdir(parents=True, exist_ok=True)
            target = SqliteTarget(str(target.path))
        creator = _sqlite_creator(target, busy_timeout_ms)
        engine = create_async_engine(url, async_creator=creator, **kwargs)
        _tune_sqlite(engine)
        return engine
    if schema is not None:
        kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
    return create_async_engine(url, pool_pre_ping=False, **kwargs)


def _sqlite_creator(target: SqliteTarget, busy_timeout_ms: int) -> Callable[[], Awaitable[Any]]:
    """Open aiosqlite connections only to files that open, each set up as every dspex SQLite
    connection is (:mod:`dspex.store._sqlite_setup`: busy timeout first, WAL, foreign keys).

    When aiosqlite fails to connect it queues its worker thread's shutdown without awaiting it;
    if the event loop closes first (a short ``asyncio.run``), that thread raises in the
    background. Opening the file once with the stdlib first (a fraction of a millisecond, once
    per pooled connection) turns a bad path into an ordinary error before any thread starts.
    """

    async def connect() -> Any:
        import aiosqlite

        sqlite3.connect(target.database, uri=target.uri).close()
        conn = await aiosqlite.connect(target.database, uri=target.uri)
        try:

            async def execute(sql: str) -> list[Any]:
                return list(await conn.execute_fetchall(sql))

            await set_up_async(execute, busy_timeout_ms, read_only=target.read_only)
        except BaseException:
            await conn.close()
            raise
        return conn

    return connect


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's implicit BEGIN (before the first write) takes the write lock at once.
        dbapi_connection.isolation_level = "IMMEDIATE"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        if connection.get_execution_options().get(LOCK_OPTION, False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

"""The SQL store: SQLite (embedded default) and PostgreSQL through SQLAlchemy 2 async.

Each public method is one short transaction. Each noun lives in its own module (``_sql_programs``,
``_sql_executions``, ``_sql_batches``, ``_sql_breakers``, ``_sql_maintenance``) over the shared
plumbing of :mod:`dspex.store._sql_core`; this class puts them together.

On SQLite the hot writes (starting and finishing executions, and the group writes of batches) go
to one writer thread (:mod:`dspex.store._sqlite_writer`) that commits everything queued at once,
each call inside its own SAVEPOINT, so calls from many tasks share a commit while a failing or
lease-lost call still changes nothing. Its statements are compiled from the same tables
(:mod:`dspex.store._sqlite_statements`). Reads stay on SQLAlchemy.
"""

from __future__ import annotations

import sqlalchemy as sa

from dspex.store._rules import check_prefix
from dspex.store._sql_batches import SqlBatches
from dspex.store._sql_breakers import SqlBreakers
from dspex.store._sql_cache import SqlCache
from dspex.store._sql_evaluations import SqlEvaluations
from dspex.store._sql_executions import SqlExecutions
from dspex.store._sql_maintenance import SqlMaintenance
from dspex.store._sql_optimizations import SqlOptimizations
from dspex.store._sql_programs import SqlPrograms
from dspex.store.base import IdKind, Store
from dspex.store.tables import batches as t_batches
from dspex.store.tables import executions as t_exec

__all__ = ["SqlStore"]


class SqlStore(
    SqlPrograms,
    SqlExecutions,
    SqlBatches,
    SqlBreakers,
    SqlCache,
    SqlEvaluations,
    SqlMaintenance,
    SqlOptimizations,
    Store,
):
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

    async def match_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> list[str]:
        check_prefix(prefix, limit)
        column = (t_exec if kind == "execution" else t_batches).c.id
        # LIKE (wildcards escaped) is exact in every collation; PostgreSQL reads it from the
        # primary key's index only under the "C" collation, else it scans (about 30 ms a
        # million executions; callers try the exact id first). SQLite's LIKE ignores case and
        # never uses an index: a range on the id (compared bytewise there) reads the index.
        pattern = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
        query = sa.select(column).where(column.like(pattern, escape="/"))
        if self.dialect == "sqlite":
            query = query.where(column >= prefix)
            last = ord(prefix[-1])
            if last < 0xD7FF:
                query = query.where(column < prefix[:-1] + chr(last + 1))
        query = query.order_by(column).limit(limit)
        async with self._tx() as conn:
            return list((await conn.execute(query)).scalars())

"""The response cache in SQL (the ``response_cache`` table, and hits counted on ``steps``).

On SQLite a lookup is a point read by primary key: it is made on the caller's thread through a
stdlib :mod:`sqlite3` connection of its own (WAL: a reader never waits for the writer), which
takes tens of microseconds where a round trip through the async driver's thread takes a
scheduler hand-off each way, milliseconds on a busy machine. Any error on that path falls back
to the ordinary query, which reports it.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.errors import StorageError
from dspex.store._memory_cache import model_stats
from dspex.store._sql_core import SqlCore
from dspex.store._sqlite_jobs import ts
from dspex.store.cache import CacheEntry, CacheStats, CacheStore
from dspex.store.tables import executions as t_exec
from dspex.store.tables import response_cache as t_cache
from dspex.store.tables import steps as t_steps

__all__ = ["SqlCache"]

_c = t_cache.c
_LOOKUP = sa.select(
    _c.program,
    _c.module,
    _c.backend,
    _c.model,
    _c.response,
    _c.cost_usd,
    _c.created_at,
    _c.expires_at,
    _c.size_bytes,
).where(
    _c.key == sa.bindparam("key"),
    sa.or_(_c.expires_at.is_(None), _c.expires_at > sa.bindparam("now", type_=_c.expires_at.type)),
)
_POINT_READ = (
    "SELECT program, module, backend, model, response, cost_usd, created_at, expires_at,"
    f" size_bytes FROM {t_cache.name} WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)"
)

_REPLACED = (
    "program",
    "module",
    "backend",
    "model",
    "response",
    "size_bytes",
    "cost_usd",
    "created_at",
    "expires_at",
)


class SqlCache(SqlCore, CacheStore):
    """:class:`~dspex.store.cache.CacheStore` in SQLite or PostgreSQL."""

    async def get_cached(self, key: str, now: datetime | None = None) -> CacheEntry | None:
        moment = now or self.clock()
        if self._sqlite_path is not None:
            try:
                return self._point_read(key, moment)
            except (sqlite3.Error, ValueError):
                pass  # the ordinary query below reports what is wrong
        async with self._tx() as conn:
            row = (await conn.execute(_LOOKUP, {"key": key, "now": moment})).first()
        if row is None:
            return None
        return CacheEntry(
            key=key,
            program=row.program,
            module=row.module,
            backend=row.backend,
            model=row.model,
            response=row.response,
            cost_usd=float(row.cost_usd),
            created_at=row.created_at,
            expires_at=row.expires_at,
            size_bytes=row.size_bytes,
        )

    def _point_read(self, key: str, now: datetime) -> CacheEntry | None:
        """:meth:`get_cached` on SQLite through the point-read connection (opened on first use,
        read-only). Raises :class:`sqlite3.Error` when that connection cannot answer."""
        with self._point_lock:
            reader = self._point_reader
            if reader is None:
                assert self._sqlite_path is not None
                path, uri = self._sqlite_path
                reader = sqlite3.connect(
                    path, uri=uri, timeout=self._busy_ms / 1000.0, check_same_thread=False
                )
                reader.execute("PRAGMA query_only = ON")
                self._point_reader = reader
            row = reader.execute(_POINT_READ, (key, ts(now))).fetchone()
        if row is None:
            return None
        program, module, backend, model, response, cost, created, expires, size = row
        return CacheEntry(
            key=key,
            program=program,
            module=module,
            backend=backend,
            model=model,
            response=json.loads(response),
            cost_usd=float(cost),
            created_at=_utc(created),
            expires_at=_utc(expires),
            size_bytes=size,
        )

    async def put_cached(self, entry: CacheEntry) -> None:
        try:
            size = len(json.dumps(entry.response, separators=(",", ":")).encode())
        except (TypeError, ValueError) as exc:
            raise StorageError(f"cached response is not JSON-serialisable: {exc}") from exc
        values: dict[str, Any] = {
            "key": entry.key,
            "program": entry.program,
            "module": entry.module,
            "backend": entry.backend,
            "model": entry.model,
            "response": entry.response,
            "size_bytes": size,
            "cost_usd": entry.cost_usd,
            "created_at": self.clock(),
            "expires_at": entry.expires_at,
        }
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        stmt = insert(t_cache).values(**values)
        # the hit count stays: the same request answered again replaces the response only
        upsert = stmt.on_conflict_do_update(
            index_elements=["key"], set_={c: stmt.excluded[c] for c in _REPLACED}
        )
        async with self._tx(write=True) as conn:
            await conn.execute(upsert)

    async def cache_stats(self, *, program: str | None = None) -> CacheStats:
        now = self.clock()
        where = [_c.program == program] if program is not None else []
        totals = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(_c.size_bytes), 0),
            sa.func.coalesce(
                sa.func.sum(sa.case((_c.expires_at <= sa.literal(now, _c.expires_at.type), 1))), 0
            ),
            sa.func.min(_c.created_at),
            sa.func.max(_c.created_at),
        ).where(*where)
        models = (
            sa.select(_c.model, sa.func.count(), sa.func.coalesce(sa.func.sum(_c.size_bytes), 0))
            .where(*where)
            .group_by(_c.model)
        )
        s = t_steps.c
        hits = sa.select(
            sa.func.count(), sa.func.coalesce(sa.func.sum(s.cost_saved_usd), 0.0)
        ).where(s.cache_hit.is_(True))
        if program is not None:
            hits = hits.join_from(t_steps, t_exec, t_exec.c.id == s.execution_id).where(
                t_exec.c.program == program
            )
        async with self._tx() as conn:
            count, size, expired, oldest, newest = (await conn.execute(totals)).one()
            by_model = {
                model: [int(n), int(total)] for model, n, total in await conn.execute(models)
            }
            hit_count, saved = (await conn.execute(hits)).one()
        return CacheStats(
            entries=int(count),
            expired=int(expired),
            size_bytes=int(size),
            hits=int(hit_count),
            cost_saved_usd=float(saved),
            oldest=oldest,
            newest=newest,
            by_model=model_stats(by_model),
        )

    async def clear_cache(
        self,
        *,
        program: str | None = None,
        created_before: datetime | None = None,
        expired: bool = False,
        dry_run: bool = False,
    ) -> int:
        where: list[sa.ColumnElement[bool]] = []
        if program is not None:
            where.append(_c.program == program)
        if created_before is not None:
            where.append(_c.created_at < sa.literal(created_before, _c.created_at.type))
        if expired:
            where.append(_c.expires_at <= sa.literal(self.clock(), _c.expires_at.type))
        if dry_run:
            async with self._tx() as conn:
                query = sa.select(sa.func.count()).select_from(t_cache).where(*where)
                return int((await conn.execute(query)).scalar_one())
        async with self._tx(write=True) as conn:
            return int((await conn.execute(t_cache.delete().where(*where))).rowcount)


def _utc(text: str | None) -> datetime | None:
    """A timestamp as SQLite keeps it (naive UTC text) as an aware datetime."""
    return None if text is None else datetime.fromisoformat(text).replace(tzinfo=UTC)

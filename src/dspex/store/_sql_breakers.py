"""Circuit-breaker states in SQL (the ``breakers`` table)."""

from __future__ import annotations

from sqlalchemy.dialects import postgresql, sqlite

from dspex.records import BreakerRecord
from dspex.store import _rows
from dspex.store._sql_core import SqlCore
from dspex.store.breakers import BreakerStore
from dspex.store.tables import breakers as t_breakers

__all__ = ["SqlBreakers"]

_STATE = ("state", "failure_count", "success_count", "opened_at", "updated_at")


class SqlBreakers(SqlCore, BreakerStore):
    """:class:`~dspex.store.breakers.BreakerStore` in SQLite or PostgreSQL."""

    async def save_breaker(self, record: BreakerRecord) -> None:
        values = {
            "backend": record.backend,
            "state": record.state,
            "failure_count": record.failure_count,
            "success_count": record.success_count,
            "opened_at": record.opened_at,
            "updated_at": self.clock(),
        }
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        stmt = insert(t_breakers).values(**values)
        upsert = stmt.on_conflict_do_update(
            index_elements=["backend"], set_={c: stmt.excluded[c] for c in _STATE}
        )
        async with self._tx(write=True) as conn:
            await conn.execute(upsert)

    async def list_breakers(self) -> list[BreakerRecord]:
        async with self._tx() as conn:
            result = await conn.execute(t_breakers.select().order_by(t_breakers.c.backend))
            return [_rows.breaker_from_row(r) for r in result.mappings()]

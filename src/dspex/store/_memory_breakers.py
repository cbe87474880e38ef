"""Circuit-breaker states in memory (the twin of :mod:`dspex.store._sql_breakers`)."""

from __future__ import annotations

from dataclasses import replace

from dspex.records import BreakerRecord
from dspex.store._memory_tables import MemoryTables
from dspex.store.base import Clock
from dspex.store.breakers import BreakerStore

__all__ = ["MemoryBreakers"]


class MemoryBreakers(BreakerStore):
    """:class:`~dspex.store.breakers.BreakerStore` over :class:`MemoryTables` (a mixin of
    :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    async def save_breaker(self, record: BreakerRecord) -> None:
        self._db.check_open()
        self._db.breakers[record.backend] = replace(record, updated_at=self.clock())

    async def list_breakers(self) -> list[BreakerRecord]:
        self._db.check_open()
        return [self._db.breakers[name] for name in sorted(self._db.breakers)]

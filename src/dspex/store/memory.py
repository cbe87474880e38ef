"""The in-memory twin of the SQL store: same contract, no database.

Each noun's twin lives in its own module (``_memory_programs``, ``_memory_executions``,
``_memory_batches``, ``_memory_breakers``, ``_memory_maintenance``) and works on one shared
:class:`~dspex.store._memory_tables.MemoryTables`; this class puts them together.
"""

from __future__ import annotations

from dspex.records import utc_now
from dspex.store._memory_batches import MemoryBatches
from dspex.store._memory_breakers import MemoryBreakers
from dspex.store._memory_cache import MemoryCache
from dspex.store._memory_evaluations import MemoryEvaluations
from dspex.store._memory_executions import MemoryExecutions
from dspex.store._memory_maintenance import MemoryMaintenance
from dspex.store._memory_optimizations import MemoryOptimizations
from dspex.store._memory_programs import MemoryPrograms
from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import check_prefix
from dspex.store.base import Clock, IdKind, Store

__all__ = ["MemoryStore"]


class MemoryStore(
    MemoryPrograms,
    MemoryExecutions,
    MemoryBatches,
    MemoryBreakers,
    MemoryCache,
    MemoryEvaluations,
    MemoryMaintenance,
    MemoryOptimizations,
    Store,
):
    """A :class:`~dspex.store.base.Store` kept in dictionaries (lost when the process ends).

    Example:
        >>> store = MemoryStore()
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        super().__init__(clock=clock)
        self._db = MemoryTables()

    @property
    def url(self) -> str:
        return "memory://"

    async def initialize(self) -> None:
        self._db.check_open()

    async def close(self) -> None:
        self._db.closed = True

    async def match_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> list[str]:
        self._db.check_open()
        check_prefix(prefix, limit)
        ids = self._db.executions if kind == "execution" else self._db.batches
        return sorted(i for i in ids if i.startswith(prefix))[:limit]

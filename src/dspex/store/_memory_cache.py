"""The response cache in memory (the twin of :mod:`dspex.store._sql_cache`)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import json_copy
from dspex.store.base import Clock
from dspex.store.cache import CacheEntry, CacheStats, CacheStore, ModelCacheStats

__all__ = ["MemoryCache", "model_stats"]


def model_stats(rows: dict[str, list[int]]) -> tuple[ModelCacheStats, ...]:
    """``{model: [entries, size]}`` as stats, largest first (then by name)."""
    ordered = sorted(rows.items(), key=lambda item: (-item[1][1], item[0]))
    return tuple(ModelCacheStats(model, n, size) for model, (n, size) in ordered)


class MemoryCache(CacheStore):
    """:class:`~dspex.store.cache.CacheStore` over :class:`MemoryTables` (a mixin of
    :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    async def get_cached(self, key: str, now: datetime | None = None) -> CacheEntry | None:
        self._db.check_open()
        entry = self._db.response_cache.get(key)
        if entry is None or _expired(entry, now or self.clock()):
            return None
        return replace(entry, response=json_copy(entry.response, "cached response"))

    async def put_cached(self, entry: CacheEntry) -> None:
        self._db.check_open()
        response = json_copy(entry.response, "cached response")
        size = len(json.dumps(response, separators=(",", ":")).encode())
        self._db.response_cache[entry.key] = replace(
            entry, response=response, created_at=self.clock(), size_bytes=size
        )

    async def cache_stats(self, *, program: str | None = None) -> CacheStats:
        self._db.check_open()
        now = self.clock()
        entries = [
            e for e in self._db.response_cache.values() if program is None or e.program == program
        ]
        by_model: dict[str, list[int]] = {}
        for e in entries:
            row = by_model.setdefault(e.model, [0, 0])
            row[0] += 1
            row[1] += e.size_bytes
        hits = 0
        saved = 0.0
        for execution_id, steps in self._db.steps.items():
            if program is not None and self._db.executions[execution_id].program != program:
                continue
            for step in steps:
                if step.cache_hit:
                    hits += 1
                    saved += step.cost_saved_usd
        created = [e.created_at for e in entries if e.created_at is not None]
        return CacheStats(
            entries=len(entries),
            expired=sum(1 for e in entries if _expired(e, now)),
            size_bytes=sum(e.size_bytes for e in entries),
            hits=hits,
            cost_saved_usd=saved,
            oldest=min(created, default=None),
            newest=max(created, default=None),
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
        self._db.check_open()
        now = self.clock()
        chosen = [
            key
            for key, e in self._db.response_cache.items()
            if (program is None or e.program == program)
            and (
                created_before is None
                or (e.created_at is not None and e.created_at < created_before)
            )
            and (not expired or _expired(e, now))
        ]
        if not dry_run:
            for key in chosen:
                del self._db.response_cache[key]
        return len(chosen)


def _expired(entry: CacheEntry, now: datetime) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now

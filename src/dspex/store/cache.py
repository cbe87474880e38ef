"""The :class:`CacheStore` interface: validated LM responses by exact request, for every process.

Implemented by :mod:`dspex.store._memory_cache` and :mod:`dspex.store._sql_cache`; its share of
the contract suite is ``tests/store/test_contract_cache.py``. What goes in and how keys are made
is :mod:`dspex.resilience.cache`'s business; the store keeps entries, their TTL and statistics.

Hits are not counted on the entry (a lookup is a plain read, so it never waits for SQLite's one
writer and works on a read-only database): a hit is recorded on the step that it answered
(``steps.cache_hit``, ``steps.cost_saved_usd``), and :meth:`CacheStore.cache_stats` counts them
there.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["CacheEntry", "CacheStats", "CacheStore", "ModelCacheStats"]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached response.

    Attributes:
        key: the request's key (64 hex characters).
        program: the program whose module made the request first.
        module: that module.
        backend: the backend (or coordinator group) name it was sent to.
        model: the model that answered (the backend's name when it did not say).
        response: ``{"outputs": …, "extras": …, "usage": {model: {prompt_tokens, …}}}`` (JSON).
        cost_usd: what the response cost when it was made (US dollars).
        created_at: when it was stored (the store sets it).
        expires_at: when it stops answering (``None``: never).
        size_bytes: the size of ``response`` as JSON (the store sets it).
    """

    key: str
    program: str
    module: str
    backend: str
    model: str
    response: dict[str, Any]
    cost_usd: float = 0.0
    created_at: datetime | None = None
    expires_at: datetime | None = None
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ModelCacheStats:
    """The entries of one model."""

    model: str
    entries: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "entries": self.entries, "size_bytes": self.size_bytes}


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the response cache holds and what it saved.

    Attributes:
        entries: stored responses (expired ones included until they are purged).
        expired: of those, how many have expired (``dspex cleanup`` purges them).
        size_bytes: the stored responses' size as JSON.
        hits: recorded steps the cache answered.
        cost_saved_usd: what those steps would have cost (each cached response's cost).
        oldest: when the oldest entry was stored.
        newest: when the newest was.
        by_model: entries and size per model, largest first.
    """

    entries: int = 0
    expired: int = 0
    size_bytes: int = 0
    hits: int = 0
    cost_saved_usd: float = 0.0
    oldest: datetime | None = None
    newest: datetime | None = None
    by_model: tuple[ModelCacheStats, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view with stable keys."""
        return {
            "entries": self.entries,
            "expired": self.expired,
            "size_bytes": self.size_bytes,
            "hits": self.hits,
            "cost_saved_usd": self.cost_saved_usd,
            "oldest": self.oldest.isoformat() if self.oldest else None,
            "newest": self.newest.isoformat() if self.newest else None,
            "by_model": [m.to_dict() for m in self.by_model],
        }


class CacheStore(abc.ABC):
    """The ``response_cache`` table (and the cache hits recorded on ``steps``)."""

    @abc.abstractmethod
    async def get_cached(self, key: str, now: datetime | None = None) -> CacheEntry | None:
        """The entry stored under ``key`` unless it expired at ``now`` (default: the clock)."""

    @abc.abstractmethod
    async def put_cached(self, entry: CacheEntry) -> None:
        """Store (or replace) ``entry``; ``created_at`` is now and ``size_bytes`` is measured."""

    @abc.abstractmethod
    async def cache_stats(self, *, program: str | None = None) -> CacheStats:
        """Entries, size, expired entries and entries by model (of ``program`` only, when given),
        and the hits recorded on its steps with the cost they saved."""

    @abc.abstractmethod
    async def clear_cache(
        self,
        *,
        program: str | None = None,
        created_before: datetime | None = None,
        expired: bool = False,
        dry_run: bool = False,
    ) -> int:
        """Delete entries, returning how many (a dry run only counts them).

        Args:
            program: only entries made by this program.
            created_before: only entries stored before this time.
            expired: only entries that have expired (what ``cleanup`` purges).
            dry_run: count, change nothing.
        """

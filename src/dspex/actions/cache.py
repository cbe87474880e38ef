"""The response cache's operations: what it holds (``stats``) and emptying it (``clear``).

The cache itself (keys, modes, where it sits in a call) is :mod:`dspex.resilience.cache`; its
entries live in the store (:class:`~dspex.store.cache.CacheStore`). Behind ``dspex cache
stats|clear``, :meth:`dspex.Runtime.cache_stats` / :meth:`~dspex.Runtime.clear_cache` and
``GET /cache/stats`` / ``DELETE /cache``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from dspex.errors import ErrorDetail, ValidationError
from dspex.store.cache import CacheStats, ModelCacheStats

if TYPE_CHECKING:
    from dspex.store.base import Store

__all__ = ["CacheCleared", "CacheStats", "ModelCacheStats", "cache_stats", "clear_cache"]


class CacheCleared(BaseModel):
    """What :func:`clear_cache` deleted (or, in a dry run, would delete).

    Attributes:
        deleted: entries deleted.
        dry_run: nothing was changed.
        program: only this program's entries were chosen.
        older_than_s: only entries stored longer ago than this many seconds were chosen.
        expired: only expired entries were chosen.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deleted: int
    dry_run: bool = False
    program: str | None = None
    older_than_s: float | None = None
    expired: bool = False


async def cache_stats(store: Store, *, program: str | None = None) -> CacheStats:
    """Entries (expired ones counted apart), their size, entries by model, and the hits recorded
    on steps with the cost they saved; of ``program`` only, when given."""
    return await store.cache_stats(program=program)


async def clear_cache(
    store: Store,
    *,
    program: str | None = None,
    older_than: timedelta | float | None = None,
    expired: bool = False,
    dry_run: bool = False,
) -> CacheCleared:
    """Delete response cache entries: all of them, or those of ``program``, stored longer ago
    than ``older_than`` (a ``timedelta`` or seconds) and/or ``expired``.

    Raises:
        ValidationError: a negative ``older_than`` (nothing deleted).
    """
    seconds: float | None = None
    if older_than is not None:
        seconds = (
            older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        )
        if not seconds >= 0:
            raise ValidationError(
                "older_than must be at least zero:",
                [ErrorDetail("older_than", "not_positive", f"got {older_than}")],
            )
    before = store.clock() - timedelta(seconds=seconds) if seconds is not None else None
    deleted = await store.clear_cache(
        program=program, created_before=before, expired=expired, dry_run=dry_run
    )
    return CacheCleared(
        deleted=deleted, dry_run=dry_run, program=program, older_than_s=seconds, expired=expired
    )

"""The response cache: what it holds (``GET /cache/stats``, read scope) and emptying it
(``DELETE /cache``, admin scope)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dspex import CacheCleared
from dspex.service.routes._common import ERRORS, JSON_TYPES, accepts
from dspex.service.schemas import CacheClearRequest
from dspex.service.state import Admin, Reader, State

__all__ = ["router"]

router = APIRouter(tags=["cache"], responses=ERRORS)


@router.get("/cache/stats", dependencies=[Reader])
async def cache_stats(state: State, program: str | None = None) -> dict[str, Any]:
    """Entries (expired ones counted apart), their size, entries by model, and the hits recorded
    on steps with the cost they saved; of ``program`` only, when given."""
    stats = await state.runtime.cache_stats(program=program)
    return stats.to_dict()


@router.delete("/cache", response_model=CacheCleared, dependencies=[Admin, accepts(JSON_TYPES)])
async def clear_cache(state: State, body: CacheClearRequest | None = None) -> CacheCleared:
    """Delete entries: every one, or a program's, older ones or expired ones."""
    from dspex import parse_age

    request = body or CacheClearRequest()
    age = parse_age(request.older_than) if request.older_than is not None else None
    return await state.runtime.clear_cache(
        program=request.program, older_than=age, expired=request.expired, dry_run=request.dry_run
    )

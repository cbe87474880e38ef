"""Evaluations and promotions: evaluate a version in the background, list the recorded scores,
promote a version past its score gate (``admin``), list the promotions."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dspex import EvaluationHandle, EvaluationResult, ProgressEvent, PromotionResult, Runtime
from dspex.service.auth import ApiKey
from dspex.service.routes._common import ERRORS, JSON_TYPES, NDJSON_TYPES, accepts
from dspex.service.routes.batches import read_items
from dspex.service.state import Reader, State, require_admin

__all__ = ["router"]

router = APIRouter(tags=["evaluations"], responses=ERRORS)

_DEVSET_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the devset: a JSON array of examples (inputs and labels), or JSON Lines",
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


class EvaluationAccepted(BaseModel):
    """``202``: the evaluation's batch is recorded and runs in the background; follow it at
    ``GET /batches/{batch_id}`` (progress as Server-Sent Events at ``GET
    /batches/{batch_id}/events``) and read the score at ``GET /programs/{name}/evaluations``."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    program: str
    metric: str
    status: str


class EvaluationList(BaseModel):
    """A program's recorded evaluations, newest first."""

    model_config = ConfigDict(extra="forbid")

    items: list[EvaluationResult]


class PromotionList(BaseModel):
    """A program's promotions, newest first."""

    model_config = ConfigDict(extra="forbid")

    items: list[PromotionResult]


class PromoteRequest(BaseModel):
    """Which version to make current, and the devset and metric of its score gate."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=Runtime.MAX_VERSION)
    metric: str | None = None
    devset: list[dict[str, Any]] | None = Field(
        None, description="examples (inputs and labels) both versions are scored on"
    )
    min_improvement: float = Field(0.0, ge=0.0)
    force: bool = False


def _write_devset(rows: Sequence[Any]) -> Path:
    """A devset given as JSON, as the JSONL file evaluation reads (removed by the caller)."""
    with tempfile.NamedTemporaryFile(
        "w", prefix="dspex-devset-", suffix=".jsonl", delete=False, encoding="utf-8"
    ) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(handle.name)


@router.post(
    "/programs/{name}/evaluations",
    status_code=202,
    response_model=EvaluationAccepted,
    dependencies=[Reader, accepts(JSON_TYPES, NDJSON_TYPES)],
    openapi_extra=_DEVSET_BODY,
)
async def start_evaluation(
    name: str,
    request: Request,
    state: State,
    metric: Annotated[str, Query(description="a built-in metric or pkg.mod:function")],
    version: Annotated[int | None, Query(ge=1, le=Runtime.MAX_VERSION)] = None,
    max_concurrency: Annotated[int, Query(ge=1, le=10_000)] = 32,
) -> Any:
    """Evaluate a version on a devset in the background (the metric and devset are checked
    first); its progress is its batch's: ``GET /batches/{batch_id}/events`` streams it, and its
    ``done`` event carries the evaluation with its score."""
    items, spooled = await read_items(request, state)
    path = spooled if spooled is not None else await asyncio.to_thread(_write_devset, items)
    runtime = state.runtime

    async def starter(on_progress: Callable[[ProgressEvent], None]) -> EvaluationHandle:
        return await runtime.start_evaluation(
            name,
            path,
            metric=metric,
            version=version,
            max_concurrency=max_concurrency,
            on_progress=on_progress,
        )

    try:
        run = await state.batches.start(name, starter)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    assert run.task is not None
    assert run.batch_id is not None
    run.task.add_done_callback(lambda _: path.unlink(missing_ok=True))
    body = EvaluationAccepted(batch_id=run.batch_id, program=name, metric=metric, status="running")
    return JSONResponse(body.model_dump(), status_code=202)


@router.get("/programs/{name}/evaluations", response_model=EvaluationList, dependencies=[Reader])
async def list_evaluations(
    name: str,
    state: State,
    version: Annotated[int | None, Query(ge=1, le=Runtime.MAX_VERSION)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> EvaluationList:
    """The recorded evaluations (scores) of a program, newest first."""
    return EvaluationList(
        items=await state.runtime.list_evaluations(name, version=version, limit=limit)
    )


@router.post(
    "/programs/{name}/promote",
    response_model=PromotionResult,
    dependencies=[accepts(JSON_TYPES)],
)
async def promote(
    name: str,
    body: PromoteRequest,
    state: State,
    key: Annotated[ApiKey | None, Depends(require_admin)],
) -> PromotionResult:
    """Make a version current past the score gate (``409`` naming both scores when it scores
    below the current version plus ``min_improvement``); ``force`` skips the gate."""
    path = None if body.devset is None else await asyncio.to_thread(_write_devset, body.devset)
    try:
        return await state.runtime.promote(
            name,
            body.version,
            devset=path,
            metric=body.metric,
            min_improvement=body.min_improvement,
            force=body.force,
            promoted_by=f"api:{key.name}" if key is not None else "api",
        )
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


@router.get("/programs/{name}/promotions", response_model=PromotionList, dependencies=[Reader])
async def list_promotions(
    name: str, state: State, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> PromotionList:
    """The moves of a program's current version, newest first."""
    return PromotionList(items=await state.runtime.list_promotions(name, limit=limit))

"""Optimization runs: start one in the background (``admin``: it writes a program version),
list and show the recorded runs with their trials, follow one's progress as Server-Sent Events,
cancel and resume it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from dspex import OptimizationEvent, OptimizationHandle, OptimizationInfo, Runtime
from dspex.errors import ErrorDetail, OptimizationError, ValidationError
from dspex.service.errors import ApiError
from dspex.service.routes._common import ERRORS, JSON_TYPES, accepts, deeper_than, nesting_too_deep
from dspex.service.routes._events import NO_BUFFERING, EventStream, event_responses
from dspex.service.state import Admin, Reader, ServiceState, State

__all__ = ["router"]

router = APIRouter(tags=["optimizations"], responses=ERRORS)

Example = dict[str, Any]


class OptimizeRequest(BaseModel):
    """What to optimize with: the examples (the program's inputs plus expected outputs), the
    metric, the optimizer and its options (``[optimize]`` in ``dspex.toml`` gives the rest)."""

    model_config = ConfigDict(extra="forbid")

    trainset: list[Example] = Field(min_length=1)
    valset: list[Example] | None = Field(
        None, min_length=1, description="the examples both scores are measured on"
    )
    metric: str = Field(description="a built-in metric or an allow-listed pkg.mod:function")
    optimizer: Literal["bootstrap_few_shot", "bootstrap_random_search", "mipro_v2", "gepa"] = (
        "bootstrap_few_shot"
    )
    version: int | None = Field(None, ge=1, le=Runtime.MAX_VERSION)
    seed: int | None = None
    max_demos: int = Field(4, ge=0, le=1000)


class OptimizationAccepted(BaseModel):
    """``202``: the run is recorded and runs in the background; follow it at
    ``GET /optimizations/{optimization_id}`` and ``GET /optimizations/{optimization_id}/events``."""

    model_config = ConfigDict(extra="forbid")

    optimization_id: str
    program: str | None
    status: Literal["running"]


class OptimizationList(BaseModel):
    """Recorded optimization runs, newest first (without their trials)."""

    model_config = ConfigDict(extra="forbid")

    items: list[OptimizationInfo]


class OptimizationDone(BaseModel):
    """The ``done`` event of ``GET /optimizations/{id}/events``: how the run ended."""

    model_config = ConfigDict(extra="forbid")

    optimization_id: str
    status: str
    version: int | None
    baseline_score: float | None
    score: float | None
    error: dict[str, str] | None


class OptimizationCancelled(BaseModel):
    """``202``: the run is being cancelled (it ends ``interrupted``, resumable)."""

    model_config = ConfigDict(extra="forbid")

    optimization_id: str
    status: Literal["cancelling"]


_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": OptimizationAccepted, "description": "the run goes on in the background"},
    **ERRORS,
}


async def _start(
    state: ServiceState,
    program: str | None,
    start: Callable[[Callable[[OptimizationEvent], None]], Any],
) -> JSONResponse:
    manager = state.optimizations
    if len(manager.running) >= manager.max_running:
        raise ApiError(
            429,
            "rate_limited",
            f"{manager.max_running} optimizations are already running; try again later",
            headers={"Retry-After": "30"},
        )

    async def starter(on_progress: Callable[[OptimizationEvent], None]) -> OptimizationHandle:
        handle: OptimizationHandle = await start(on_progress)
        return handle

    run = await manager.start(program, starter)
    assert run.optimization_id is not None
    body = OptimizationAccepted(
        optimization_id=run.optimization_id, program=program, status="running"
    )
    return JSONResponse(body.model_dump(), status_code=202)


@router.post(
    "/programs/{name}/optimizations",
    status_code=202,
    response_model=OptimizationAccepted,
    responses=_ACCEPTED,
    dependencies=[Admin, accepts(JSON_TYPES)],
)
async def start_optimization(name: str, body: OptimizeRequest, state: State) -> Any:
    """Optimize a program version with a DSPy optimizer in the background; the result is a new
    ``draft`` version (everything checkable is checked first: ``422``, nothing recorded)."""
    if deeper_than([*body.trainset, *(body.valset or [])]):
        raise nesting_too_deep("an example")
    runtime = state.runtime

    def start(on_progress: Callable[[OptimizationEvent], None]) -> Any:
        return runtime.start_optimization(
            name,
            body.trainset,
            metric=body.metric,
            optimizer=body.optimizer,
            version=body.version,
            valset=body.valset,
            seed=body.seed,
            max_demos=body.max_demos,
            on_progress=on_progress,
        )

    return await _start(state, name, start)


@router.get("/optimizations", response_model=OptimizationList, dependencies=[Reader])
async def list_optimizations(
    state: State,
    program: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> OptimizationList:
    """Recorded optimization runs, newest first (a run whose process died is ``interrupted``)."""
    items = await state.runtime.list_optimizations(program=program, limit=limit)
    return OptimizationList(items=items)


@router.get(
    "/optimizations/{optimization_id}", response_model=OptimizationInfo, dependencies=[Reader]
)
async def get_optimization(optimization_id: str, state: State) -> OptimizationInfo:
    """One run: status, lineage, scores, trials, what it cost and the version it made."""
    return await state.runtime.get_optimization(optimization_id)


_EVENTS = event_responses(
    "Server-Sent Events: `progress` events (the run started, its baseline, each candidate"
    " scored, its program and LM calls so far, its result; those kept already, then each new"
    " one), then one `done` event, after which the stream ends",
    ("the run went on: its phase, the trial recorded, its calls so far", OptimizationEvent),
    (
        "the run ended: its status, the version it made and its scores, or its error",
        OptimizationDone,
    ),
)


@router.get(
    "/optimizations/{optimization_id}/events",
    response_model=None,
    response_class=EventStream,
    dependencies=[Reader],
    responses=_EVENTS,
)
async def optimization_events(optimization_id: str, state: State) -> EventStream:
    """Server-Sent Events: the run's ``progress``, then ``done``."""
    info = await state.runtime.get_optimization(optimization_id)
    run = state.optimizations.get(optimization_id)

    async def recorded() -> AsyncIterator[str]:
        done = OptimizationDone(
            optimization_id=info.optimization_id,
            status=info.status.value,
            version=info.version,
            baseline_score=info.baseline_score,
            score=info.score,
            error=None if info.error is None else {"code": "recorded", "message": info.error},
        )
        yield f"id: 1\nevent: done\ndata: {done.model_dump_json()}\n\n"

    if run is None and info.status == "running":
        raise OptimizationError(
            f"optimization {optimization_id} runs in another process: follow it at"
            f" GET /optimizations/{optimization_id}"
        )
    stream = state.optimizations.events(run) if run is not None else recorded()
    return EventStream(stream, headers=NO_BUFFERING)


@router.post(
    "/optimizations/{optimization_id}/cancel",
    status_code=202,
    response_model=OptimizationCancelled,
    dependencies=[Admin, accepts(JSON_TYPES)],
)
async def cancel_optimization(optimization_id: str, state: State) -> OptimizationCancelled:
    """Cancel a run going on in this service (it ends ``interrupted`` and can be resumed)."""
    info = await state.runtime.get_optimization(optimization_id)
    run = state.optimizations.get(optimization_id)
    if run is None or run.finished or run.task is None:
        raise OptimizationError(
            f"optimization {optimization_id} is not running in this service"
            f" (status {info.status.value})"
        )
    run.task.cancel()
    return OptimizationCancelled(optimization_id=optimization_id, status="cancelling")


@router.post(
    "/optimizations/{optimization_id}/resume",
    status_code=202,
    response_model=OptimizationAccepted,
    responses=_ACCEPTED,
    dependencies=[Admin, accepts(JSON_TYPES)],
)
async def resume_optimization(optimization_id: str, state: State) -> Any:
    """Go on with a ``failed`` or ``interrupted`` run (or one whose process died), with the data
    sets, settings and seed it started with; its baseline and scored candidates are reused."""
    run = state.optimizations.get(optimization_id)
    if run is not None and not run.finished:
        message = f"optimization {optimization_id} is still running in this service"
        raise ValidationError(message, [ErrorDetail("optimization_id", "running", message)])
    info = await state.runtime.get_optimization(optimization_id)
    runtime = state.runtime

    def start(on_progress: Callable[[OptimizationEvent], None]) -> Any:
        return runtime.start_optimization(resume=optimization_id, on_progress=on_progress)

    return await _start(state, info.program, start)

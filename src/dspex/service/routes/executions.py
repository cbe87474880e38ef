"""Executions: run one (answer with the result, stream it as Server-Sent Events, or ``202`` and
run it in the background), get one, list them with filters and cursor pagination."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter

from dspex import (
    ExecutionDetail,
    ExecutionDone,
    ExecutionEvent,
    ExecutionPage,
    ExecutionResult,
    ExecutionStarted,
    ExecutionStatus,
    StepFinished,
    StepStarted,
    StreamRetry,
    TokenDelta,
)
from dspex.errors import ErrorDetail, ValidationError
from dspex.service.routes._common import ERRORS, JSON_TYPES, reader_sending
from dspex.service.routes._events import (
    NO_BUFFERING,
    EventStream,
    inlined_schema,
    sse_event_schema,
)
from dspex.service.schemas import ExecuteRequest, ExecutionAccepted
from dspex.service.state import SUBMITTED, ReadState, ServiceState

__all__ = ["router"]

router = APIRouter(tags=["executions"], responses=ERRORS)

# the key, then the JSON media type, checked by one dependency (the service's hot path)
JsonReader = Annotated[ServiceState, reader_sending(JSON_TYPES)]


def _schema(model: Any) -> dict[str, Any]:
    """An event's ``data``: the event model without its ``event`` name (the SSE field)."""
    schema: dict[str, Any] = inlined_schema(model.model_json_schema())
    del schema["properties"]["event"]  # it has a default: never required
    return schema


_STREAMED: dict[str, Any] = {
    "text/event-stream": {
        "schema": {"type": "string"},
        "itemSchema": {
            "oneOf": [
                sse_event_schema("started", "the execution is recorded", _schema(ExecutionStarted)),
                sse_event_schema("step_started", "a module starts", _schema(StepStarted)),
                sse_event_schema(
                    "token",
                    "the next piece of a final module's output field",
                    _schema(TokenDelta),
                ),
                sse_event_schema(
                    "retry",
                    "a final module's new attempt: its tokens so far are void",
                    _schema(StreamRetry),
                ),
                sse_event_schema("step_finished", "a module ended", _schema(StepFinished)),
                sse_event_schema(
                    "done",
                    "the execution ended: the record a non-streaming request answers with",
                    inlined_schema(ExecutionResult.model_json_schema()),
                ),
            ]
        },
    }
}


@router.post(
    "/programs/{name}/executions",
    response_model=ExecutionResult,
    responses={
        200: {
            "description": "the recorded execution, or with `stream=true` its events",
            "content": _STREAMED,
        },
        202: {"model": ExecutionAccepted, "description": "running in the background"},
        **ERRORS,
    },
)
async def execute(
    name: str,
    body: ExecuteRequest,
    state: JsonReader,
    wait: Annotated[bool, Query(description="false: answer 202 once recorded")] = True,
    stream: Annotated[
        bool, Query(description="true: answer with Server-Sent Events as it runs")
    ] = False,
) -> Any:
    """Run a ready program once. A failed execution is still ``200`` with ``status: failed``.

    With ``stream=true`` the answer is Server-Sent Events: ``started``, ``step_started`` and
    ``step_finished`` per module, ``token`` per piece of the final modules' answer (``retry``
    when a new attempt voids the tokens sent), then ``done`` with the execution record. A client
    that disconnects stops the events, not the execution: it runs on and is recorded.
    """
    runtime = state.runtime
    if stream:
        if not wait:
            raise ValidationError(
                "stream=true answers as the execution runs; it does not take wait=false",
                [ErrorDetail("wait", "conflict", "give stream=true or wait=false, not both")],
            )
        events = runtime.stream(
            name,
            body.inputs,
            version=body.version,
            backend=body.backend,
            timeout=body.timeout,
            strategy=body.strategy,
            cache=body.cache,
        )
        # the first event comes once the execution is recorded: an error before it (no such
        # program, bad inputs, …) is an ordinary error response
        first = await anext(aiter(events))
        return EventStream(_sse(first, events), headers=NO_BUFFERING)
    run = runtime.execute(
        name,
        body.inputs,
        version=body.version,
        backend=body.backend,
        timeout=body.timeout,
        strategy=body.strategy,
        cache=body.cache,
    )
    if wait:
        return await run
    loop = asyncio.get_running_loop()
    recorded: asyncio.Future[str] = loop.create_future()
    context = contextvars.copy_context()
    context.run(SUBMITTED.set, recorded)
    task = loop.create_task(run, context=context)
    state.spawn(task)
    waiters: set[asyncio.Future[Any]] = {task, recorded}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    if recorded.done():
        accepted = ExecutionAccepted(execution_id=recorded.result(), status="running")
        return JSONResponse(accepted.model_dump(), status_code=202)
    # It ended before it was recorded: a bad request (not found, not ready, bad inputs…).
    recorded.cancel()
    return task.result()


_RESULT: TypeAdapter[ExecutionResult] = TypeAdapter(ExecutionResult)


async def _sse(first: ExecutionEvent, rest: AsyncIterator[ExecutionEvent]) -> AsyncIterator[str]:
    """The events as Server-Sent Events (``id``, ``event``, ``data``); ``done``'s data is the
    execution record."""
    sequence = 1
    yield _frame(first, sequence)
    async for event in rest:
        sequence += 1
        yield _frame(event, sequence)


def _frame(event: ExecutionEvent, sequence: int) -> str:
    if isinstance(event, ExecutionDone):
        data = _RESULT.dump_json(event.execution).decode()
    else:
        data = event.model_dump_json(exclude={"event"})
    return f"id: {sequence}\nevent: {event.event}\ndata: {data}\n\n"


@router.get("/executions", response_model=ExecutionPage)
async def list_executions(
    state: ReadState,
    program: str | None = None,
    status: ExecutionStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> ExecutionPage:
    """Executions, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    return await state.runtime.list_executions(
        program=program, status=status, limit=limit, cursor=cursor
    )


@router.get("/executions/{execution_id}", response_model=ExecutionDetail)
async def get_execution(execution_id: str, state: ReadState) -> ExecutionDetail:
    """Everything recorded about one execution."""
    return await state.runtime.get_execution(execution_id)

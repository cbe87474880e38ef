"""Executions: run one (answer with the result, or ``202`` and run it in the background), get
one, list them with filters and cursor pagination."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from dspex import ExecutionDetail, ExecutionPage, ExecutionResult, ExecutionStatus
from dspex.service.routes._common import ERRORS, JSON_TYPES, reader_sending
from dspex.service.schemas import ExecuteRequest, ExecutionAccepted
from dspex.service.state import SUBMITTED, ReadState, ServiceState

__all__ = ["router"]

router = APIRouter(tags=["executions"], responses=ERRORS)

# the key, then the JSON media type, checked by one dependency (the service's hot path)
JsonReader = Annotated[ServiceState, reader_sending(JSON_TYPES)]


@router.post(
    "/programs/{name}/executions",
    response_model=ExecutionResult,
    responses={
        202: {"model": ExecutionAccepted, "description": "running in the background"},
        **ERRORS,
    },
)
async def execute(
    name: str,
    body: ExecuteRequest,
    state: JsonReader,
    wait: Annotated[bool, Query(description="false: answer 202 once recorded")] = True,
) -> Any:
    """Run a ready program once. A failed execution is still ``200`` with ``status: failed``."""
    runtime = state.runtime
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

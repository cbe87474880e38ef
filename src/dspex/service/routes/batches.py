"""Batches: submit (a JSON array, or JSONL streamed to a temporary file), status and
statistics, progress as Server-Sent Events, results as JSONL in input order, cancel, resume."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from dspex import BatchOptions, ProgressEvent
from dspex.errors import BatchError, ErrorDetail, ValidationError
from dspex.service.batches import store_events
from dspex.service.errors import ApiError
from dspex.service.routes._common import (
    ERRORS,
    JSON_TYPES,
    MAX_NESTING,
    NDJSON_TYPES,
    accepts,
    deeper_than,
    media_type,
    nesting_too_deep,
    parse_json,
)
from dspex.service.routes._events import NO_BUFFERING, EventStream, event_responses
from dspex.service.schemas import BatchAccepted, BatchDone, BatchFailure, BatchStatusResponse
from dspex.service.state import Reader, ServiceState, State

if TYPE_CHECKING:
    from dspex import BatchHandle
    from dspex.service.batches import BatchRun

__all__ = ["router"]

router = APIRouter(tags=["batches"], responses=ERRORS)

Items = accepts(JSON_TYPES, NDJSON_TYPES)

_ITEMS_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the items: a JSON array of input objects, or JSON Lines (one per line)",
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


class JsonLines(StreamingResponse):
    media_type = "application/x-ndjson"


class BatchCancelled(BaseModel):
    """``202``: the batch is being cancelled (it ends ``cancelled``, resumable), or was at once
    (``cancelled``: no process was running it)."""

    model_config = ConfigDict(extra="forbid")

    batch_id: str
    status: Literal["cancelling", "cancelled"]


class SubmitOptions(NamedTuple):
    """The query options of a submitted (or resumed) batch: the batch's options and its
    backend."""

    batch: BatchOptions
    backend: str | None


async def batch_options(  # async: a plain def would run in the threadpool
    max_concurrency: int = 32,
    max_retries: int = 2,
    max_errors: int | None = None,
    continue_on_error: bool = True,
    item_timeout: float | None = None,
    backend: str | None = None,
    validate: Literal["upfront", "per_item"] = "upfront",
    max_cost: float | None = None,
) -> SubmitOptions:
    """Raises :class:`~dspex.ValidationError` (``422``) naming every option out of bounds."""
    options = BatchOptions.of(
        max_concurrency=max_concurrency,
        max_retries=max_retries,
        max_errors=max_errors,
        continue_on_error=continue_on_error,
        item_timeout=item_timeout,
        validate=validate,
        max_cost=max_cost,
    )
    return SubmitOptions(options, backend)


Options = Annotated[SubmitOptions, Depends(batch_options)]


def _discard(path: Path) -> None:
    path.unlink(missing_ok=True)


def _openers(data: bytes) -> int:
    return data.count(b"[") + data.count(b"{")


class _LineNesting:
    """Refuses a JSON line nested deeper than :data:`MAX_NESTING` as the body streams in.

    The runtime parses each line again later, where a line past the JSON parser's own limit
    would end the batch with a ``RecursionError``. A line holding no more than
    :data:`MAX_NESTING` opening brackets cannot nest deeper, so only the rare lines holding more
    are parsed here; the rest cost two byte counts per chunk.
    """

    def __init__(self) -> None:
        self._tail = bytearray()  # the line not ended yet
        self._line = 1  # the number of its first line

    def feed(self, chunk: bytes) -> None:
        cut = chunk.rfind(b"\n")
        if cut < 0:
            self._tail += chunk
            return
        self._tail += chunk[:cut]
        block = bytes(self._tail)
        self._tail = bytearray(chunk[cut + 1 :])
        self._check(block)

    def close(self) -> None:
        self._check(bytes(self._tail))
        self._tail.clear()

    def _check(self, block: bytes) -> None:
        first = self._line
        self._line += block.count(b"\n") + 1
        if _openers(block) <= MAX_NESTING:
            return
        for number, line in enumerate(block.split(b"\n"), start=first):
            if _openers(line) > MAX_NESTING and _too_deep(line):
                raise nesting_too_deep(f"line {number} of the items")


def _too_deep(line: bytes) -> bool:
    try:
        value = json.loads(line)
    except RecursionError:
        return True
    except ValueError:
        return False  # not JSON: the batch reports it as an invalid item
    return deeper_than([value])


def _too_many(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"a batch may hold at most {limit} items")


async def read_items(request: Request, state: ServiceState) -> tuple[Any, Path | None]:
    """The items as a list (JSON) or a JSONL file path (removed by the caller)."""
    limit = state.max_batch_items
    if media_type(request) in NDJSON_TYPES:
        handle = await asyncio.to_thread(
            tempfile.NamedTemporaryFile, "wb", prefix="dspex-batch-", suffix=".jsonl", delete=False
        )
        path = Path(handle.name)
        nesting = _LineNesting()
        try:
            lines = 0
            last = b"\n"
            async for chunk in request.stream():
                lines += chunk.count(b"\n")
                nesting.feed(chunk)
                handle.write(chunk)
                if chunk:
                    last = chunk[-1:]
                if lines > limit:
                    raise _too_many(limit)
            nesting.close()
            handle.close()
        except BaseException:
            handle.close()
            _discard(path)
            raise
        if last != b"\n":
            lines += 1
        if lines > limit:
            _discard(path)
            raise _too_many(limit)
        return str(path), path
    raw = await request.body()
    items = parse_json(raw)
    if not isinstance(items, list):
        raise ValidationError(
            "the items must be a JSON array of input objects:",
            [ErrorDetail("body", "not_an_array", f"got {type(items).__name__}")],
        )
    if len(items) > limit:
        raise _too_many(limit)
    if _openers(raw) > MAX_NESTING + 1 and deeper_than(items):
        raise nesting_too_deep("an item")
    bad = [
        ErrorDetail(f"items.{i}", "not_an_object", "each item must be an object")
        for i, item in enumerate(items)
        if not isinstance(item, dict)
    ]
    if bad:
        raise ValidationError("every item must be an object:", bad)
    return items, None


async def _start(
    request: Request,
    state: ServiceState,
    program: str,
    options: SubmitOptions,
    resume: str | None = None,
) -> BatchRun:
    if len(state.batches.running) >= state.batches.max_running:
        raise ApiError(
            429,
            "rate_limited",
            f"{state.batches.max_running} batches are already running; try again later",
            headers={"Retry-After": "5"},
        )
    items, spooled = await read_items(request, state)
    runtime = state.runtime

    async def starter(on_progress: Callable[[ProgressEvent], None]) -> BatchHandle:
        return await runtime.start_batch(
            program,
            items,
            backend=options.backend,
            options=options.batch,
            resume=resume,
            on_progress=on_progress,
            recoverable=True,  # another replica can take it over if this one dies
        )

    try:
        run = await state.batches.start(program, starter)
    except BaseException:
        if spooled is not None:
            _discard(spooled)
        raise
    if spooled is not None and run.task is not None:
        run.task.add_done_callback(lambda _: _discard(spooled))
    return run


def _accepted(run: BatchRun) -> JSONResponse:
    assert run.batch_id is not None
    body = BatchAccepted(batch_id=run.batch_id, status="running")
    return JSONResponse(body.model_dump(), status_code=202)


_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": BatchAccepted, "description": "the batch runs in the background"},
    **ERRORS,
}


@router.post(
    "/programs/{name}/batches",
    status_code=202,
    response_model=BatchAccepted,
    responses=_ACCEPTED,
    dependencies=[Reader, Items],
    openapi_extra=_ITEMS_BODY,
)
async def submit_batch(name: str, request: Request, state: State, options: Options) -> Any:
    """Run a ready program over many inputs in the background (every item checked first)."""
    return _accepted(await _start(request, state, name, options))


@router.get("/batches/{batch_id}", response_model=BatchStatusResponse, dependencies=[Reader])
async def batch_status(batch_id: str, state: State) -> BatchStatusResponse:
    """The recorded status and counts (from any replica); statistics once it finished in
    this process."""
    info = await state.runtime.get_batch(batch_id)
    run = state.batches.get(batch_id)
    stats = run.stats if run is not None else None
    error = BatchFailure(**run.error) if run is not None and run.error is not None else None
    return BatchStatusResponse(
        batch_id=info.batch_id,
        program=info.program,
        program_version=info.program_version,
        status=info.status,
        counts={
            "total": info.total,
            "completed": info.completed,
            "failed": info.failed,
            "cancelled": info.cancelled,
            "remaining": info.remaining,
        },
        running_here=run is not None and not run.finished,
        stats=stats,
        error=error,
        cost_usd=info.cost_usd,
        rate_limited_s=info.rate_limited_s,
        driver=info.driver,
        cancel_requested=info.cancel_requested,
    )


_EVENTS = event_responses(
    "Server-Sent Events: a `progress` event per finished item (those kept already, then each"
    " new one), then one `done` event, after which the stream ends",
    ("an item finished: the batch's counts, rate and time left", ProgressEvent),
    ("the batch ended: its final status, statistics and error", BatchDone),
)


@router.get(
    "/batches/{batch_id}/events",
    response_model=None,
    response_class=EventStream,
    dependencies=[Reader],
    responses=_EVENTS,
)
async def batch_events(batch_id: str, state: State) -> EventStream:
    """Server-Sent Events: ``progress`` per finished item, then ``done``. A batch another
    replica drives (or that no process runs) is followed in the store: a polled ``progress``
    event whenever its counts change, then ``done``."""
    runtime = state.runtime
    info = await runtime.get_batch(batch_id)
    run = state.batches.get(batch_id)
    stream = state.batches.events(run) if run is not None else store_events(runtime, info)
    return EventStream(stream, headers=NO_BUFFERING)


@router.get(
    "/batches/{batch_id}/results",
    response_model=None,
    dependencies=[Reader],
    responses={200: {"content": {"application/x-ndjson": {"schema": {"type": "string"}}}}},
)
async def batch_results(batch_id: str, state: State) -> JsonLines:
    """One JSON line per item, in input order: index, status, outputs or error."""
    runtime = state.runtime
    await runtime.get_batch(batch_id)

    async def lines() -> AsyncIterator[bytes]:
        async for item in runtime.batch_results(batch_id):
            yield (json.dumps(item.to_line(), ensure_ascii=False, default=str) + "\n").encode()

    return JsonLines(lines())


@router.post(
    "/batches/{batch_id}/cancel",
    status_code=202,
    response_model=BatchCancelled,
    dependencies=[Reader, accepts(JSON_TYPES)],  # no body is read: one sent must still be JSON
)
async def cancel_batch(batch_id: str, state: State) -> BatchCancelled:
    """Cancel a batch wherever it runs (it ends ``cancelled`` and can be resumed): at once in
    this replica; in another, the request is recorded and its driver stops it when it next
    renews its lease (a third of ``lease_seconds``)."""
    run = state.batches.get(batch_id)
    if run is not None and not run.finished and run.task is not None:
        state.batches.cancel(run)
        return BatchCancelled(batch_id=batch_id, status="cancelling")
    info = await state.runtime.cancel_batch(batch_id)
    status = "cancelled" if info.status == "cancelled" else "cancelling"
    return BatchCancelled(batch_id=batch_id, status=status)


@router.post(
    "/batches/{batch_id}/resume",
    status_code=202,
    response_model=BatchAccepted,
    responses=_ACCEPTED,
    dependencies=[Reader, Items],
    openapi_extra=_ITEMS_BODY,
)
async def resume_batch(batch_id: str, request: Request, state: State, options: Options) -> Any:
    """Re-run what did not complete (send the same items again)."""
    info = await state.runtime.get_batch(batch_id)
    run = state.batches.get(batch_id)
    if run is not None and not run.finished:
        raise BatchError(f"batch {batch_id} is still running", batch_id=batch_id)
    return _accepted(await _start(request, state, info.program, options, resume=batch_id))

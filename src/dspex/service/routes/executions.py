"""Executions: run one (answer with the result, stream it as Server-Sent Events, or ``202`` and
run it in the background), get one, list them with filters and cursor pagination.

``POST /programs/{name}/executions`` is the service's hot path, so it has a second door:
:class:`ExecuteFastPath`, plain ASGI in front of the whole app (its middleware included). It
answers the requests the app would hand to :func:`execute` as they are — a declared body within
the size limit, a JSON media type, what the loopback guard lets through, a reader's key, a body
that is a valid :class:`~dspex.service.schemas.ExecuteRequest`, no query string (so neither
``stream`` nor ``wait``) — through the same :func:`run_execution`, with the app's own exception
handlers and crash guard, and passes every other request, body included, to the app, whose
route answers it (its ``401``/``403``/``413``/``415``/``422`` included) and documents the route.
FastAPI's per-request work (its middleware stack, solving dependencies, validating the returned
model again) cost about a quarter of the service's CPU per execution
(``benchmarks/bench_service.py``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import TypeAdapter
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
from dspex.service.batches import POLL_S
from dspex.service.events import sse
from dspex.service.middleware import CrashGuardMiddleware, loopback_refusal
from dspex.service.routes._common import (
    ERRORS,
    JSON_TYPES,
    accepts,
    media_type,
    reader_sending,
)
from dspex.service.routes._events import (
    JSON_ERRORS,
    NO_BUFFERING,
    EventStream,
    inlined_schema,
    sse_event_schema,
)
from dspex.service.schemas import ExecuteRequest, ExecutionAccepted
from dspex.service.state import Reader, ReadState, ServiceState, State

__all__ = ["EXECUTE_PATH", "ExecuteFastPath", "router", "run_execution"]

EXECUTE_PATH = "/programs/{name}/executions"

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
    EXECUTE_PATH,
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
        events = runtime.stream(name, body.inputs, **body.run_options())
        # the first event comes once the execution is recorded: an error before it (no such
        # program, bad inputs, …) is an ordinary error response
        first = await anext(aiter(events))
        return EventStream(_sse(first, events), headers=NO_BUFFERING)
    return await run_execution(state, name, body, wait=wait)


async def run_execution(
    state: ServiceState, name: str, body: ExecuteRequest, *, wait: bool
) -> ExecutionResult | JSONResponse:
    """Run program ``name`` as ``body`` asks: its result, or (``wait`` false) ``202`` once it is
    recorded and running in the background."""
    if wait:
        return await state.runtime.execute(name, body.inputs, **body.run_options())
    handle = await state.runtime.start_execution(name, body.inputs, **body.run_options())
    state.spawn(handle.task)
    accepted = ExecutionAccepted(execution_id=handle.execution_id, status="running")
    return JSONResponse(accepted.model_dump(), status_code=202)


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


def _reader_allowed(state: ServiceState, request: Request) -> bool:
    """Whether the request's key may read (what ``reader_sending``'s check lets through)."""
    if not state.keys.enabled:
        return True
    scheme, credentials = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() != "bearer" or not credentials:
        return False
    key = state.keys.authenticate(credentials)
    return key is not None and key.allows("read")


def _request_body(state: ServiceState, request: Request, raw: bytes) -> ExecuteRequest | None:
    """The body as FastAPI would pass it to :func:`execute`, or ``None`` when FastAPI would
    answer the request itself (a missing or refused key, another media type, a query string,
    a body that is not a valid :class:`ExecuteRequest`)."""
    if request.scope.get("query_string") or media_type(request) not in JSON_TYPES:
        return None
    if not raw or not _reader_allowed(state, request):
        return None
    try:
        return ExecuteRequest.model_validate(json.loads(raw))
    except (ValueError, RecursionError, pydantic.ValidationError):
        return None  # JSONDecodeError and UnicodeDecodeError are ValueErrors


Handler = Callable[[Request, Any], Response | Awaitable[Response]]

_EXECUTE = re.compile(r"/programs/([^/]+)/executions")
_RUN = "dspex.execute"
"""The scope key of what a taken request asks for: ``(program name, body)``."""


class ExecuteFastPath:
    """``POST /programs/{name}/executions`` without FastAPI's per-request machinery (see the
    module docstring); whatever it does not take goes on to the app, which answers it.

    Args:
        state: the service's state.
        handlers: the app's exception handlers, by exception class: a run's errors are
            answered by the handler the app would use.
    """

    def __init__(self, state: ServiceState, handlers: Mapping[Any, Handler]) -> None:
        self.state = state
        self.handlers = handlers
        self._guarded = CrashGuardMiddleware(self._answer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        name = self._name(scope)
        if name is None:
            await app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            raw = await request.body()
        except ClientDisconnect:
            return  # nobody to answer
        body = _request_body(self.state, request, raw)
        if body is None:
            await app(scope, _replay(raw, receive), send)
            return
        scope[_RUN] = (name, body)
        await self._guarded(scope, receive, send)

    def _name(self, scope: Scope) -> str | None:
        """The program a request is for, when this door may take it (known before its body
        is read: what the app's middleware would refuse goes on to the app)."""
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope.get("query_string")
            or scope.get("root_path")
        ):
            return None
        match = _EXECUTE.fullmatch(scope["path"])
        if match is None:
            return None
        length = b""
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
        if not length.isdigit() or not 0 < int(length) <= self.state.max_body_bytes:
            return None
        if not self.state.keys.enabled and loopback_refusal(scope) is not None:
            return None
        return match.group(1)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        name, body = scope[_RUN]
        try:
            result = await run_execution(self.state, name, body, wait=True)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # the crash guard answers 500
            response = handler(Request(scope, receive), exc)
            if inspect.isawaitable(response):
                response = await response
            await response(scope, receive, send)
            return
        assert isinstance(result, ExecutionResult)  # wait=True: the result itself
        payload = result.__pydantic_serializer__.to_json(result, by_alias=True)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(payload)).encode("ascii")),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _handler(self, exc: Exception) -> Handler | None:
        for cls in type(exc).__mro__:
            handler = self.handlers.get(cls)
            if handler is not None:
                return handler
        return None


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the already-read body again, then hands over to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:  # pragma: no cover - FastAPI reads the body once
            return await receive()
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay


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


class ExecutionCancelled(pydantic.BaseModel):
    """``202``: the execution is being cancelled (``cancelling``: the process running it stops
    it when it next renews its lease, and records it ``cancelled``), or was at once
    (``cancelled``: no process held it)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    execution_id: str
    status: Literal["cancelling", "cancelled"]


@router.post(
    "/executions/{execution_id}/cancel",
    status_code=202,
    response_model=ExecutionCancelled,
    dependencies=[Reader, accepts(JSON_TYPES)],  # no body is read: one sent must still be JSON
)
async def cancel_execution(execution_id: str, state: State) -> ExecutionCancelled:
    """Cancel an execution wherever it runs, in this replica or another sharing the database
    (``409`` when it has already finished)."""
    detail = await state.runtime.cancel_execution(execution_id)
    status: Literal["cancelling", "cancelled"] = (
        "cancelled" if detail.status == ExecutionStatus.CANCELLED else "cancelling"
    )
    return ExecutionCancelled(execution_id=detail.execution_id, status=status)


_DETAIL_SCHEMA = inlined_schema(ExecutionDetail.model_json_schema())
_FOLLOWED: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: a `step_finished` event per step as it appears in"
        " the store (while the execution runs, for one of several modules running longer than"
        " `live_steps_seconds`; else once it ended), in run order, then one `done` event, after"
        " which the stream ends",
        "content": {
            "text/event-stream": {
                "schema": {"type": "string"},
                "itemSchema": {
                    "oneOf": [
                        sse_event_schema(
                            "step_finished",
                            "a module ended (recorded in the store): the step as"
                            " `GET /executions/{id}` lists it",
                            _DETAIL_SCHEMA["properties"]["steps"]["items"],
                        ),
                        sse_event_schema(
                            "done",
                            "the execution ended: the record `GET /executions/{id}` answers with",
                            _DETAIL_SCHEMA,
                        ),
                    ]
                },
            }
        },
    },
    **JSON_ERRORS,
}

_ENDED = frozenset({ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})


@router.get(
    "/executions/{execution_id}/events",
    response_model=None,
    response_class=EventStream,
    dependencies=[Reader],
    responses=_FOLLOWED,
)
async def execution_events(execution_id: str, state: State) -> EventStream:
    """Follow an execution wherever it runs (this replica or another sharing the database),
    read from the store every half second: a ``step_finished`` event per step as it appears
    there, in run order, then ``done`` with its record once it ended. A run of several modules
    records its finished steps while it runs once it is older than ``live_steps_seconds``
    (default 0.5 s), so they come while it goes on; a shorter one's come when it ends. One
    already finished has them all at once."""
    runtime = state.runtime
    detail = await runtime.get_execution(execution_id)

    async def events(detail: ExecutionDetail) -> AsyncIterator[str]:
        sent = 0  # steps sent so far: the store only ever adds steps after them
        while True:
            for step in detail.steps[sent:]:
                sent += 1
                yield sse("step_finished", step.model_dump(mode="json"), sent)
            if detail.status in _ENDED:
                break
            await asyncio.sleep(POLL_S)
            detail = await runtime.get_execution(execution_id)
        yield sse("done", detail.model_dump(mode="json"), sent + 1)

    return EventStream(events(detail), headers=NO_BUFFERING)

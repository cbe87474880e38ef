"""Streaming one execution: its steps as they start and finish, its answer token by token.

:class:`ExecutionStream` is what a streaming execution reports to: the engine's hooks
(``before_step``/``after_step``) and the backends' token sink
(:data:`~dspex.backends.streaming.TOKEN_SINK`) in one object, turning each into an event in
order. :meth:`ExecutionStream.events` hands the events to one consumer while the execution runs
in a task of its own, then the ``done`` event with the recorded result. A consumer that goes away
(closes the iterator, a client that disconnects) stops only the events: the execution runs on to
its end and is recorded as any other.

The events, by their ``event`` name:

- ``started``: the execution is recorded (its id) and about to run;
- ``step_started``: a module starts (its name and kind);
- ``token``: the next piece of an output field's value in a final module's answer (a module
  whose outputs are the program's);
- ``retry``: a final module makes a new attempt after tokens of an earlier one were sent (a
  retry, a failover or ChatAdapter's JSON fallback): the module's tokens so far are void, the
  tokens that follow are the new attempt's;
- ``step_finished``: a module ended (status, duration, attempts, error, outputs);
- ``done``: the execution ended; ``execution`` is the recorded result, the same one a
  non-streaming execute returns.

The tokens are a preview: the validated outputs in ``step_finished`` and ``done`` are the answer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dspex.actions.models import ExecutionResult
from dspex.engine.graph import INPUT
from dspex.records import StepStatus

if TYPE_CHECKING:
    from dspex.engine.program import Program
    from dspex.engine.results import StepResult

__all__ = [
    "ExecutionDone",
    "ExecutionEvent",
    "ExecutionStarted",
    "ExecutionStream",
    "StepFinished",
    "StepStarted",
    "StreamRetry",
    "TokenDelta",
]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class ExecutionStarted(_Event):
    """The execution is recorded and about to run."""

    event: Literal["started"] = "started"
    execution_id: str
    program: str
    program_version: int


class StepStarted(_Event):
    """Module ``module`` starts."""

    event: Literal["step_started"] = "step_started"
    module: str
    kind: str


class StepFinished(_Event):
    """Module ``module`` ended (``outputs`` are its validated outputs when it completed)."""

    event: Literal["step_finished"] = "step_finished"
    module: str
    kind: str
    status: StepStatus
    duration_ms: float
    attempts: int
    error_code: str | None = None
    error_message: str | None = None
    outputs: dict[str, Any] | None = None


class TokenDelta(_Event):
    """The next piece of output ``field``'s value in module ``module``'s answer."""

    event: Literal["token"] = "token"
    module: str
    field: str
    text: str


class StreamRetry(_Event):
    """Module ``module`` starts attempt ``attempt`` after tokens of an earlier attempt were
    sent: its tokens so far are void."""

    event: Literal["retry"] = "retry"
    module: str
    attempt: int


class ExecutionDone(_Event):
    """The execution ended; ``execution`` is its recorded result."""

    event: Literal["done"] = "done"
    execution: ExecutionResult


ExecutionEvent = Annotated[
    ExecutionStarted | StepStarted | TokenDelta | StreamRetry | StepFinished | ExecutionDone,
    Field(discriminator="event"),
]
"""One event of a streamed execution (``event`` names which)."""


class ExecutionStream:
    """The events of one streaming execution, for one consumer.

    Hand it to :func:`dspex.actions.execute.execute` (``stream=``): the execution reports its
    steps to it as hooks and its final modules' tokens as the token sink, all on the event
    loop (DSPy's stream listeners hand their tokens over on the loop too).
    """

    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._final: frozenset[str] = frozenset()
        self._attempts: dict[str, int] = {}  # streamed attempts per module
        self._sent: set[str] = set()  # modules whose current attempt sent tokens

    # --- what the execution reports ----------------------------------------------------------

    def started(self, *, execution_id: str, program: str, version: int) -> None:
        self._put(
            ExecutionStarted(execution_id=execution_id, program=program, program_version=version)
        )

    def before_run(
        self, *, run_id: str, program: Program, inputs: Mapping[str, Any], strategy: str
    ) -> None:
        graph = program.graph
        self._final = frozenset(
            graph.names[source] for _, source, _ in graph.outputs if source != INPUT
        )

    def before_step(
        self, *, run_id: str, module: str, kind: str, inputs: Mapping[str, Any]
    ) -> None:
        self._put(StepStarted(module=module, kind=kind))

    def after_step(self, *, run_id: str, step: StepResult) -> None:
        self._put(
            StepFinished(
                module=step.name,
                kind=step.kind,
                status=step.status,
                duration_ms=step.duration_ms,
                attempts=step.attempts,
                error_code=step.error_code,
                error_message=step.error_message,
                outputs=step.outputs,
            )
        )

    # the token sink (dspex.backends.streaming.TokenSink)

    def wants(self, module: str) -> bool:
        return module in self._final and not self._closed

    def begin(self, module: str) -> None:
        attempt = self._attempts[module] = self._attempts.get(module, 0) + 1
        if module in self._sent:
            self._sent.discard(module)
            self._put(StreamRetry(module=module, attempt=attempt))

    def token(self, module: str, field: str, text: str) -> None:
        self._sent.add(module)
        self._put(TokenDelta(module=module, field=field, text=text))

    # --- what the consumer reads -------------------------------------------------------------

    async def events(self, run: asyncio.Task[ExecutionResult]) -> AsyncIterator[ExecutionEvent]:
        """The events as they come while ``run`` (the execution's task) goes on, then
        ``done``; raises what ``run`` raised (a program not found, bad inputs, …)."""
        run.add_done_callback(lambda _: self._wake.set())
        items = self._items
        try:
            while True:
                while items:
                    yield items.popleft()
                if run.done():
                    break
                await self._wake.wait()
                self._wake.clear()
            result = run.result()
            yield ExecutionDone(execution=result)
        finally:
            self.close()

    def close(self) -> None:
        """The consumer is gone: no more events are kept (the execution goes on)."""
        self._closed = True
        self._items.clear()

    def _put(self, event: _Event) -> None:
        if self._closed:
            return
        self._items.append(event)
        self._wake.set()

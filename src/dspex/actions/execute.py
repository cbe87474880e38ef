"""The execute operation (DESIGN §3.1): one recorded run of a ready program.

load the program (must be ``ready``) → validate the inputs (every error, nothing recorded yet) →
create the execution already claimed by this worker (one transaction, written while the run's
first module begins: the run does not wait for the database, but nothing of it is returned or
written before the record is, and a record the store refuses stops the run) → run the graph
while a heartbeat keeps the lease alive (and, past ``live_steps_seconds``, the steps finished so
far are recorded while it runs: :mod:`dspex.actions._live_steps`) → finish
``completed``/``failed`` with steps, attempts, usage, duration and error in one transaction
conditional on the lease token (program counters bumped in it) → telemetry.

Failures after the record exists are recorded and returned as a ``failed`` result, never raised:
module and backend failures, outputs that fail validation, and the overall ``timeout``. A run
cancelled from outside is recorded ``cancelled`` and the cancellation re-raised; one a cancel was
asked for in the store (from any process: its heartbeat reports it) is recorded and returned
``cancelled``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dspex._strategies import PRIORITISED_STRATEGIES, STRATEGIES, CacheMode
from dspex.actions._heartbeat import Heartbeat
from dspex.actions._live_steps import LiveSteps
from dspex.actions.models import ErrorInfo, ExecutionResult, StepInfo
from dspex.actions.programs import ProgramCache, default_version
from dspex.backends.streaming import TOKEN_SINK
from dspex.batch.executors import Executors
from dspex.engine.history import median_durations
from dspex.engine.recording import run_records
from dspex.engine.results import RunResult, StepResult
from dspex.errors import (
    ConfigError,
    DspexError,
    ErrorDetail,
    NotFoundError,
    ProgramStateError,
    ValidationError,
)
from dspex.records import (
    ExecutionRecord,
    ExecutionStatus,
    ProgramRecord,
    ProgramStatus,
    new_id,
)
from dspex.resilience.cache import check_mode

if TYPE_CHECKING:
    from dspex.actions.streaming import ExecutionStream
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.store.base import Store
    from dspex.telemetry import Telemetry

__all__ = ["DurationCache", "ExecuteContext", "execute"]

log = logging.getLogger("dspex.execution")


class DurationCache:
    """Per-module median durations from history, per program version, refreshed every N uses.

    Only strategies that order ready modules by remaining work use them, and only programs with
    parallel branches (width > 1) can benefit; everything else gets ``None`` without a query.
    """

    def __init__(self, *, refresh_every: int = 50, window: int = 1000) -> None:
        self.refresh_every = refresh_every
        self.window = window
        self._entries: dict[tuple[str, int], tuple[dict[str, float] | None, int]] = {}

    async def get(
        self, store: Store, record: ProgramRecord, program: Program, strategy: str
    ) -> dict[str, float] | None:
        if strategy not in PRIORITISED_STRATEGIES or program.plan().width <= 1:
            return None
        key = (record.name, record.version)
        entry = self._entries.get(key)
        if entry is None or entry[1] <= 0:
            steps = await store.list_steps_for_program(
                record.name, version=record.version, limit=self.window
            )
            entry = (median_durations(steps) or None, self.refresh_every)
        self._entries[key] = (entry[0], entry[1] - 1)
        return entry[0]


@dataclass(slots=True)
class ExecuteContext:
    """What execute needs from the runtime (built once, reused by every execution)."""

    store: Store
    engine: Engine
    worker_id: str
    lease_seconds: float = 30.0
    live_steps_seconds: float = 0.5
    programs: ProgramCache = field(default_factory=ProgramCache)
    durations: DurationCache = field(default_factory=DurationCache)
    telemetry: Telemetry | None = None
    hooks: Sequence[object] = ()
    ready: dict[tuple[str, int | None], ProgramRecord] = field(default_factory=dict)
    # where batches run; kept between batches (a Ray connection, its actors), closed with the
    # runtime
    executors: Executors = field(default_factory=Executors)


async def execute(
    ctx: ExecuteContext,
    program: str,
    inputs: Mapping[str, Any],
    *,
    version: int | None = None,
    backend: str | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - the public contract
    strategy: str | None = None,
    stream: ExecutionStream | None = None,
    cache: str | None = None,
    on_recorded: Callable[[str], object] | None = None,
) -> ExecutionResult:
    """Run a ready program once on ``inputs`` and record it.

    Args:
        ctx: the runtime's store, engine, caches and identity.
        program: the program name.
        inputs: values for the program signature's inputs.
        version: the version to run (default: the current version, else the newest; it must
            be ready).
        backend: run every predict/chain_of_thought module on this configured backend.
        timeout: overall seconds for the run; past it the run is cancelled and recorded
            ``failed`` with code ``timeout``.
        strategy: overrides the program's strategy.
        stream: reports the run's steps and its final modules' tokens as they come (see
            :mod:`dspex.actions.streaming`); the run and its record are the same without it.
        cache: the response cache mode of this run (``off``, ``read_only``, ``read_write``),
            over the modules' and backends' own (see :mod:`dspex.resilience.cache`).
        on_recorded: called with the execution id once its record is written, before the run
            starts (with it, or a ``stream``, the run waits for its record: whoever learns the
            id can find it in the store at once; without, the two overlap).

    Returns:
        The recorded result: ``completed``, ``failed`` with ``error``, or ``cancelled`` (code
        ``cancelled``) when a cancel was asked for while it ran.

    Raises:
        NotFoundError: no such program (version).
        ProgramStateError: the version is not ``ready`` (the message names its status).
        ValidationError: the inputs do not match the signature (nothing was recorded).
        ConfigError: unknown backend or strategy (nothing was recorded).
        LeaseLostError: another worker took the execution over; this run's result was not
            written.
        asyncio.CancelledError: cancelled from outside (recorded ``cancelled`` first).
    """
    engine = ctx.engine
    if backend is not None and backend not in engine.backends:
        known = ", ".join(sorted(engine.backends))
        raise ConfigError(f"unknown backend {backend!r} (configured: {known})")
    if timeout is not None and not timeout > 0:
        raise ValidationError(
            "timeout must be positive:", [ErrorDetail("timeout", "not_positive", f"{timeout}")]
        )
    cache_mode = check_mode(cache)
    for attempt in range(2):
        # The first try trusts a cached ready record; the store re-checks readiness (and that
        # no newer version exists) in the same statement that creates the execution.
        record = await _ready_program(ctx, program, version, cached=attempt == 0)
        prog = ctx.programs.get(record, backend)
        chosen = strategy or prog.spec.strategy
        if chosen not in STRATEGIES:
            raise ConfigError(f"unknown strategy {chosen!r}; use one of {', '.join(STRATEGIES)}")
        valid = prog.signature.validate_inputs(dict(inputs))
        durations = await ctx.durations.get(ctx.store, record, prog, chosen)
        execution_id = new_id()
        # The record is written while the run begins (the run's first module does not wait
        # for the database); nothing of the run is returned or written before it is.
        starting = asyncio.ensure_future(
            ctx.store.start_execution(
                program,
                record.version,
                valid,
                worker_id=ctx.worker_id,
                lease_seconds=ctx.lease_seconds,
                execution_id=execution_id,
                require_ready=True,
                require_latest=version is None,
            )
        )
        run = _Run(ctx, starting, execution_id, program, record.version)
        try:
            return await _run(
                run, prog, valid, chosen, durations, timeout, stream, cache_mode, on_recorded
            )
        except BaseException as exc:
            if not run.refused():
                raise
            if ctx.telemetry is not None:
                why = exc if isinstance(exc, DspexError) else None
                ctx.telemetry.execution_refused(execution_id, why)
            stale = isinstance(exc, ProgramStateError | NotFoundError)
            if stale:  # the cached ready record was stale: look again, once
                ctx.ready.pop((program, version), None)
            if attempt or not stale:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


async def _run(
    run: _Run,
    prog: Program,
    valid: dict[str, Any],
    strategy: str,
    durations: dict[str, float] | None,
    timeout: float | None,  # noqa: ASYNC109 - execute's
    stream: ExecutionStream | None,
    cache_mode: CacheMode | None,
    on_recorded: Callable[[str], object] | None,
) -> ExecutionResult:
    """Run ``prog`` for the execution ``run`` is starting, and record how it ended."""
    ctx, execution_id = run.ctx, run.execution_id
    engine = ctx.engine
    if ctx.telemetry is not None:
        ctx.telemetry.execution_started(
            execution_id=execution_id, program=run.program, version=run.version
        )
    order = prog.plan().order
    if len(order) > 1:  # one module: its one step ends with the run, nothing to record before
        run.live = LiveSteps(ctx.store, run.started, order, ctx.live_steps_seconds, engine.prices)
    hooks: tuple[object, ...] = (run,) if run.live is None else (run, run.live)
    if stream is not None or on_recorded is not None:
        await run.started()  # the id given out names an execution that exists
        if on_recorded is not None:
            on_recorded(execution_id)
    sink = None
    if stream is not None:
        stream.started(execution_id=execution_id, program=run.program, version=run.version)
        hooks = (*hooks, stream)
        sink = TOKEN_SINK.set(stream)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    heartbeat = Heartbeat(
        run.beat, ctx.lease_seconds, f"execution {execution_id}", run.cancel_asked
    )
    run.running = True
    try:
        try:
            async with asyncio.timeout(timeout) as deadline:
                result = await engine.run(
                    prog,
                    valid,
                    strategy=strategy,
                    run_id=execution_id,
                    hooks=hooks,
                    durations=durations,
                    cache=cache_mode,
                )
        finally:
            run.running = False
            if sink is not None:
                TOKEN_SINK.reset(sink)
            await heartbeat.stop()
    except TimeoutError:
        if not deadline.expired():
            raise
        message = f"the execution exceeded its timeout of {timeout:g}s"
        return await run.finish(
            ExecutionStatus.FAILED, ErrorInfo(code="timeout", message=message), _ms(loop, t0)
        )
    except asyncio.CancelledError:
        if run.stopped and run.task.uncancel() == 0:
            await run.started()  # raises why the record could not be written
        cancelled = ErrorInfo(code="cancelled", message="the execution was cancelled")
        if run.asked and run.task.uncancel() == 0:
            # cancelled on request (its heartbeat saw it): a result, not an exception
            return await run.finish(ExecutionStatus.CANCELLED, cancelled, _ms(loop, t0))
        try:
            await asyncio.shield(run.finish(ExecutionStatus.CANCELLED, cancelled, _ms(loop, t0)))
        except DspexError:
            if not run.refused():
                raise
        raise
    except DspexError as exc:
        # The program cannot run here any more (a backend was removed, an import refused…).
        error = ErrorInfo(code=exc.code, message=exc.message)
        return await run.finish(ExecutionStatus.FAILED, error, _ms(loop, t0))
    except Exception as exc:
        error = ErrorInfo(code="internal_error", message=f"{type(exc).__name__}: {exc}")
        await run.finish(ExecutionStatus.FAILED, error, _ms(loop, t0))
        raise
    return await run.finish_run(result)


async def _ready_program(
    ctx: ExecuteContext, program: str, version: int | None, *, cached: bool
) -> ProgramRecord:
    key = (program, version)
    record = ctx.ready.get(key) if cached else None
    if record is None:
        chosen = await default_version(ctx.store, program, version)
        record = await ctx.store.get_program(program, chosen)
        if record.status is not ProgramStatus.READY:
            raise ProgramStateError(
                f"program {program!r} v{record.version} is {record.status.value}, not ready:"
                f" run `dspex program init {program}`",
                status=record.status.value,
            )
        ctx.ready[key] = record
    return record


def _ms(loop: asyncio.AbstractEventLoop, t0: float) -> float:
    return round((loop.time() - t0) * 1000.0, 3)


class _Run:
    """One execution in flight: its record being written, the engine's final result, and the
    finish that records how it ended."""

    __slots__ = (
        "asked",
        "ctx",
        "execution_id",
        "live",
        "program",
        "result",
        "running",
        "starting",
        "stopped",
        "task",
        "version",
    )

    def __init__(
        self,
        ctx: ExecuteContext,
        starting: asyncio.Future[ExecutionRecord],
        execution_id: str,
        program: str,
        version: int,
    ) -> None:
        self.ctx = ctx
        self.starting = starting
        self.execution_id = execution_id
        self.program = program
        self.version = version
        self.live: LiveSteps | None = None
        self.result: RunResult | None = None
        self.asked = False
        self.running = False  # the engine runs
        self.stopped = False  # the engine was cancelled because the record was refused
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        starting.add_done_callback(self._start_done)

    def _start_done(self, starting: asyncio.Future[ExecutionRecord]) -> None:
        if self.refused() and self.running:
            # No record, so nothing of the run may go on: stop it; execute raises why.
            self.stopped = True
            self.task.cancel()

    def refused(self) -> bool:
        """Whether writing the record failed (the run must not be recorded nor returned)."""
        starting = self.starting
        return starting.done() and (starting.cancelled() or starting.exception() is not None)

    async def started(self) -> ExecutionRecord:
        """The execution's record, once written (raises why it could not be)."""
        starting = self.starting
        if starting.done():
            return starting.result()
        # shielded: whoever waits for it being cancelled does not stop the write
        return await asyncio.shield(starting)

    async def beat(self) -> None:
        """Renew the lease (the heartbeat's beat)."""
        try:
            record = await self.started()
        except DspexError:
            return  # not written: the run is being stopped
        await self.ctx.store.heartbeat(record.id, record.lease_token or "", self.ctx.lease_seconds)

    def cancel_asked(self) -> None:
        """A cancel was asked for from anywhere (its heartbeat saw it): stop the run."""
        self.asked = True
        self.task.cancel()

    def after_run(self, *, run_id: str, result: RunResult) -> None:
        # Called by the engine for every run, a cancelled one included: keeps partial steps.
        self.result = result

    async def finish_run(self, result: RunResult) -> ExecutionResult:
        error = None
        if result.error is not None:
            error = ErrorInfo(
                code=result.error.code, message=result.error.message, module=result.error.module
            )
        status = result.status
        outputs = dict(result.outputs) if status is ExecutionStatus.COMPLETED else None
        return await self._write(status, outputs, error, result.duration_ms, result.steps)

    async def finish(
        self, status: ExecutionStatus, error: ErrorInfo, duration_ms: float
    ) -> ExecutionResult:
        steps = self.result.steps if self.result is not None else ()
        return await self._write(status, None, error, duration_ms, steps)

    async def _write(
        self,
        status: ExecutionStatus,
        outputs: dict[str, Any] | None,
        error: ErrorInfo | None,
        duration_ms: float,
        steps: Sequence[StepResult],
    ) -> ExecutionResult:
        record = await self.started()
        if self.live is not None:
            await self.live.close()  # what it recorded while running is not written again
        base = record.started_at or record.created_at
        records = run_records(steps, base, self.ctx.engine.prices)
        # one entry per module: the child steps of dspy modules (dotted names) are left out
        backend_of = {step.name: step.backend for step in steps}
        step_infos = [
            StepInfo.from_record(s, base=base, backend=backend_of[s.module])
            for s in records.steps
            if s.module in backend_of
        ]
        calls = sum(step.attempts for step in steps)
        usage = records.usage
        await self.ctx.store.finish_execution(
            record.id,
            record.lease_token or "",
            status,
            outputs=outputs,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
            usage=usage,
            duration_ms=duration_ms,
            backend=records.backend,
            steps=records.steps,
            attempts=records.attempts,
            cost_usd=records.cost_usd,
        )
        result = ExecutionResult(
            execution_id=record.id,
            program=record.program,
            program_version=self.version,
            status=status,
            outputs=outputs,
            error=error,
            duration_ms=duration_ms,
            usage=usage,
            steps=step_infos,
            attempts=calls,
            cost_usd=records.cost_usd,
        )
        await self._announce(result)
        return result

    async def _announce(self, result: ExecutionResult) -> None:
        if self.ctx.telemetry is not None:
            self.ctx.telemetry.execution_finished(result)
        for hook in self.ctx.hooks:
            method = getattr(hook, "after_execution", None)
            if callable(method):
                outcome = method(result=result)
                if inspect.isawaitable(outcome):
                    await outcome

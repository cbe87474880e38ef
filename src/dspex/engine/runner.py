"""Running a graph: a scheduler that decides what is ready (no I/O) and a runner that does the I/O.

:class:`Scheduler` is a plain state machine over module indices. It knows the strategy
(``sequential``: one at a time in plan order; ``parallel``: level by level with a barrier;
``optimized``/``resource_aware``: a module is ready as soon as its own dependencies completed,
longest remaining path first) and the failure tolerance (which failures skip dependents and which
abort the run).

:class:`Runner` starts one task per ready module; leaving the run for any reason (abort, a hook
error, outside cancellation) cancels and awaits every module still running, as a TaskGroup would,
and resources are held through ``async with`` and so are released on every path.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dspex._strategies import PRIORITISED_STRATEGIES
from dspex.engine.graph import INPUT, Graph
from dspex.engine.policy import Attempts, CallExecutor, module_policy
from dspex.engine.results import StepResult
from dspex.engine.spec import FailureTolerance, ModuleSpec, RetrySpec
from dspex.errors import error_code, is_retryable
from dspex.records import StepStatus
from dspex.resilience.coordinator import attempts_of

if TYPE_CHECKING:
    from dspex.backends.base import BackendAttempt, Usage
    from dspex.engine.analysis import Plan
    from dspex.engine.kinds import KindRunner, ModuleResult
    from dspex.engine.program import Program
    from dspex.engine.resources import ResourceManager
    from dspex.hooks import HookDispatcher
    from dspex.signatures.signature import Signature

__all__ = ["Runner", "Scheduler", "SingleRunner"]

_PENDING, _READY, _RUNNING = 0, 1, 2
_COMPLETED, _FAILED, _SKIPPED, _CANCELLED = 3, 4, 5, 6
_STATUS = {
    _COMPLETED: StepStatus.COMPLETED,
    _FAILED: StepStatus.FAILED,
    _SKIPPED: StepStatus.SKIPPED,
    _CANCELLED: StepStatus.CANCELLED,
}


class Scheduler:
    """Which modules may start now, given what finished. Pure: no I/O, no clock, no tasks.

    Args:
        graph: the validated graph.
        plan: its plan (order, levels, remaining path lengths).
        strategy: ``sequential``, ``parallel``, ``optimized`` or ``resource_aware``.
        tolerance: the failure tolerance.
    """

    def __init__(
        self, graph: Graph, plan: Plan, strategy: str, tolerance: FailureTolerance
    ) -> None:
        n = len(graph)
        self._dependents = graph.dependents
        self._tolerance = tolerance
        self._limit = 1 if strategy == "sequential" else n
        self._barrier = strategy == "parallel"
        position = [0] * n
        for pos, i in enumerate(plan.order_by_index):
            position[i] = pos
        if strategy in PRIORITISED_STRATEGIES:
            remaining = plan.remaining_by_index
            self._key: list[tuple[float, int]] = [(-remaining[i], position[i]) for i in range(n)]
        else:
            self._key = [(0.0, position[i]) for i in range(n)]
        self.state = [_PENDING] * n
        self.blocked_by: list[int] = [-1] * n  # for skipped modules: the failed module
        self.failures = 0
        self.aborted = False
        self.running = 0
        self._unfinished = n
        self._waiting = [len(d) for d in graph.deps]
        self._heap: list[tuple[tuple[float, int], int]] = []
        self._level_of = plan.level_of
        self._level_left = [len(level) for level in plan.levels]
        self._level = 0
        self._held: list[list[int]] = [[] for _ in plan.levels]
        for i in range(n):
            if self._waiting[i] == 0:
                self._make_ready(i)

    @property
    def finished(self) -> bool:
        """Every module reached a final state."""
        return self._unfinished == 0

    def take(self) -> list[int]:
        """The modules to start now (marked running), best first."""
        out: list[int] = []
        heap = self._heap
        while heap and self.running < self._limit:
            i = heapq.heappop(heap)[1]
            self.state[i] = _RUNNING
            self.running += 1
            out.append(i)
        return out

    def complete(self, i: int) -> None:
        """Module ``i`` completed: release its dependents whose dependencies are all done."""
        self._end(i, _COMPLETED)
        waiting = self._waiting
        for c in self._dependents[i]:
            waiting[c] -= 1
            if waiting[c] == 0 and self.state[c] == _PENDING:
                self._make_ready(c)

    def fail(self, i: int) -> bool:
        """Module ``i`` failed: skip what depends on it; abort if the tolerance is exceeded.

        Returns:
            ``True`` when the run must abort (the runner then cancels what is running).
        """
        self._end(i, _FAILED)
        self.failures += 1
        stack = [i]
        while stack:
            for c in self._dependents[stack.pop()]:
                # a dependent of a failed module cannot be ready yet: it waited for this one
                if self.state[c] == _PENDING:
                    self.blocked_by[c] = i
                    self._end(c, _SKIPPED, was_running=False)
                    stack.append(c)
        if not self.aborted and not self._tolerance.allows(self.failures):
            self.abort()
        return self.aborted

    def cancelled(self, i: int) -> None:
        """Running module ``i`` was cancelled."""
        self._end(i, _CANCELLED)

    def abort(self) -> None:
        """Start nothing more: every module not yet started is cancelled."""
        self.aborted = True
        self._heap.clear()
        for held in self._held:
            held.clear()
        for i, state in enumerate(self.state):
            if state in (_PENDING, _READY):
                self._end(i, _CANCELLED, was_running=False)

    def status(self, i: int) -> StepStatus | None:
        """The final status of module ``i`` (``None`` while pending or running)."""
        return _STATUS.get(self.state[i])

    # ------------------------------------------------------------------------ internals

    def _make_ready(self, i: int) -> None:
        if self.aborted:
            return
        if self._barrier and self._level_of[i] != self._level:
            self._held[self._level_of[i]].append(i)
            return
        self.state[i] = _READY
        heapq.heappush(self._heap, (self._key[i], i))

    def _end(self, i: int, state: int, *, was_running: bool = True) -> None:
        self.state[i] = state
        if was_running:
            self.running -= 1
        self._unfinished -= 1
        if self._barrier:
            level = self._level_of[i]
            self._level_left[level] -= 1
            while self._level < len(self._level_left) and self._level_left[self._level] == 0:
                self._level += 1
                if self._level < len(self._held):
                    for j in self._held[self._level]:
                        if self.state[j] == _PENDING:
                            self._make_ready(j)
                    self._held[self._level].clear()


class _Static:
    """What every run of one program and graph shares (computed once, not per run)."""

    __slots__ = (
        "backends",
        "graph",
        "inputs_checked",
        "output_names",
        "outputs_checked",
        "program",
        "signatures",
        "specs",
    )

    def __init__(self, program: Program, graph: Graph) -> None:
        self.program = program
        self.graph = graph
        self.specs: tuple[ModuleSpec, ...] = tuple(program.modules.values())
        self.backends = tuple(
            spec.backend_name if spec.kind not in ("python", "retrieve") else None
            for spec in self.specs
        )
        self.signatures: tuple[Signature, ...] = tuple(
            program.module_signature(name) for name in graph.names
        )
        output_names: dict[int, frozenset[str]] = {}  # modules share signature objects
        for signature in self.signatures:
            if id(signature) not in output_names:
                output_names[id(signature)] = frozenset(signature.output_names)
        self.output_names = tuple(output_names[id(sig)] for sig in self.signatures)
        # A one-module program whose module takes the program's inputs as they are and gives
        # the program its outputs as they are, under an equal signature: what the program
        # signature validated needs no second validation by the module's, and the other way
        # round (a batch item is validated once, its answer once).
        self.inputs_checked = False
        self.outputs_checked = False
        if len(self.specs) == 1:
            module_sig = self.signatures[0]
            same = module_sig == program.signature
            self.inputs_checked = same and all(
                b.source == INPUT and b.field == b.source_field for b in graph.bindings[0]
            )
            self.outputs_checked = (
                same
                and self.specs[0].kind != "chain_of_thought"
                and len(graph.outputs) == len(module_sig.output_names)
                and all(b.source == 0 and b.field == b.source_field for b in graph.outputs)
            )


_STATICS: dict[int, _Static] = {}
_STATICS_LIMIT = 256


def _static(program: Program, graph: Graph) -> _Static:
    # Keyed by identity; the entry keeps program and graph alive so an id cannot be reused.
    entry = _STATICS.get(id(program))
    if entry is not None and entry.program is program and entry.graph is graph:
        return entry
    if len(_STATICS) >= _STATICS_LIMIT:
        _STATICS.clear()
    entry = _STATICS[id(program)] = _Static(program, graph)
    return entry


class Runner:
    """Runs one program graph once; fills per-module records for the engine to report.

    The engine builds it with everything resolved; :meth:`run` returns when every module reached
    a final state, raising only for outside cancellation or a hook error.
    """

    # One runner per run: slots keep its three dozen attributes out of a per-run dict (past
    # thirty keys an instance dict stops sharing its keys and is rebuilt on every run).
    __slots__ = (
        "_backends",
        "_before_step",
        "_clock",
        "_done",
        "_entered",
        "_event_loop",
        "_output_names",
        "_static_info",
        "_tasks",
        "_unreported",
        "_unstarted",
        "_wake",
        "attempts",
        "default_retry",
        "details",
        "ended",
        "errors",
        "executor",
        "final",
        "graph",
        "hooks",
        "inputs",
        "kinds",
        "order",
        "outputs",
        "program",
        "resources",
        "run_id",
        "scheduler",
        "signatures",
        "specs",
        "started",
        "t0",
        "usage",
        "wait",
    )

    def __init__(
        self,
        *,
        program: Program,
        graph: Graph,
        plan: Plan,
        strategy: str,
        kinds: KindRunner,
        executor: CallExecutor,
        resources: ResourceManager | None,
        hooks: HookDispatcher,
        run_id: str,
        inputs: Mapping[str, Any],
        default_retry: RetrySpec,
    ) -> None:
        self.program = program
        self.graph = graph
        self.kinds = kinds
        self.executor = executor
        self.hooks = hooks
        self.run_id = run_id
        self.inputs = inputs
        self.default_retry = default_retry
        static = self._static_info = _static(program, graph)
        self.specs: Sequence[ModuleSpec] = static.specs
        self._backends = static.backends
        self.signatures: Sequence[Signature] = static.signatures
        self._output_names = static.output_names
        self.resources = resources if strategy == "resource_aware" else None
        self.order = plan.order_by_index
        self.details: dict[int, tuple[BackendAttempt, ...]] = {}  # coordinator attempts, if any
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock once running
        self.t0 = 0.0
        self.final: dict[int, StepResult] = {}  # steps already reported in their final state
        # Hooks are fixed for the run: decide once whether each per-module hook is dispatched.
        self._before_step = hooks.has("before_step")
        self._init_state(len(graph), plan, strategy)

    def _init_state(self, n: int, plan: Plan, strategy: str) -> None:
        """The per-module state of a run of ``n`` modules."""
        self.scheduler = Scheduler(self.graph, plan, strategy, self.program.spec.failure_tolerance)
        self.started: list[float | None] = [None] * n
        self.ended: list[float | None] = [None] * n
        self.wait: list[float] = [0.0] * n
        self.attempts: list[Attempts | None] = [None] * n
        self.outputs: list[dict[str, Any] | None] = [None] * n
        self.usage: list[Mapping[str, Usage] | None] = [None] * n
        self.errors: list[BaseException | None] = [None] * n
        self._done: deque[int] = deque()  # modules that ended, for the loop to account for
        self._wake = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}  # started modules not yet ended
        self._entered = [False] * n  # whether a module's coroutine began running
        self._unstarted: list[asyncio.Task[None]] = []  # cancelled before their first step
        self._event_loop: asyncio.AbstractEventLoop  # set when the run starts
        self._unreported: dict[int, None] = {}  # started, after_step not yet called

    @property
    def outputs_checked(self) -> bool:
        """The last module's validated outputs are the program's as they are (see
        :class:`SingleRunner`): the engine need not validate them again."""
        return False

    def retryable(self, name: str) -> bool:
        """Whether module ``name`` failed with an error that may pass when run again."""
        error = self.errors[self.graph.index[name]]
        return error is not None and is_retryable(error)

    def result_steps(self) -> tuple[tuple[StepResult, ...], Mapping[str, Usage] | None]:
        """Every module's step in plan order, and their summed usage when it is known here
        (``None``: the caller sums it)."""
        return tuple([self.final.get(i) or self.step(i) for i in self.order]), None

    async def run(self) -> None:
        """Run every module to a final state.

        Raises:
            asyncio.CancelledError: the run was cancelled from outside (modules are cancelled).
            Exception: a hook raised (modules are cancelled, the error propagates).
        """
        sched = self.scheduler
        self._event_loop = asyncio.get_running_loop()
        self._clock = self._event_loop.time
        self.t0 = self._clock()
        after_step = self.hooks.has("after_step")
        try:
            await self._loop(sched, after_step)
        except asyncio.CancelledError:
            # Cancelled from outside: every module has been cancelled and awaited; the started
            # ones still get their after_step so records are not left dangling.
            if after_step:
                for i in list(self._unreported):
                    step = self.step(i)
                    await self.hooks.call("after_step", run_id=self.run_id, step=step)
            raise

    async def _loop(self, sched: Scheduler, after_step: bool) -> None:
        try:
            while True:
                for i in sched.take():
                    inputs = self._resolve(i)
                    if self._before_step:
                        await self.hooks.call(
                            "before_step",
                            run_id=self.run_id,
                            module=self.graph.names[i],
                            kind=self.specs[i].kind,
                            inputs=inputs,
                        )
                    self._start(i, inputs)
                if sched.finished:
                    break
                if not self._done:
                    if not self._tasks:  # pragma: no cover - a validated graph cannot stall
                        raise RuntimeError("scheduler stalled with nothing running")
                    await self._wake.wait()
                    self._wake.clear()
                while self._done:
                    i = self._done.popleft()
                    self._finish(i)
                    del self._unreported[i]
                    if after_step:
                        # final now: kept so the run's result does not build it again
                        step = self.final[i] = self.step(i)
                        await self.hooks.call("after_step", run_id=self.run_id, step=step)
        finally:
            await self._stop_modules()

    def _start(self, i: int, inputs: dict[str, Any]) -> None:
        # A plain task with no done callback: each module reports its own end (see _module) and
        # _stop_modules gives the structured-concurrency guarantee a TaskGroup would, without
        # two extra event-loop callbacks per module.
        self._tasks[i] = self._event_loop.create_task(self._module(i, inputs))
        self._unreported[i] = None

    def _ended(self, i: int) -> None:
        self._tasks.pop(i, None)
        self._done.append(i)
        self._wake.set()

    def _cancel_running(self) -> None:
        """Cancel every started module that has not ended."""
        for i, task in list(self._tasks.items()):
            task.cancel()
            if not self._entered[i]:
                # Cancelled before its first step, its coroutine never runs and so never
                # reports: it ends here (and is awaited by _stop_modules).
                self._ended(i)
                self._unstarted.append(task)

    async def _stop_modules(self) -> None:
        """Cancel every module task still alive and wait until each has finished.

        Whatever ends the run (completion, abort, a hook error, outside cancellation), no module
        outlives it. A cancellation arriving while waiting is held until all have finished, then
        raised.
        """
        alive = [t for t in (*self._tasks.values(), *self._unstarted) if not t.done()]
        for task in alive:
            task.cancel()
        interrupted = False
        while alive:
            try:
                await asyncio.wait(alive)
            except asyncio.CancelledError:
                interrupted = True
            alive = [t for t in alive if not t.done()]
        if interrupted:
            raise asyncio.CancelledError

    def _finish(self, i: int) -> None:
        sched = self.scheduler
        error = self.errors[i]
        if self.outputs[i] is not None:
            sched.complete(i)
        elif error is None or isinstance(error, asyncio.CancelledError):
            sched.cancelled(i)
        elif sched.fail(i):
            self._cancel_running()

    def _resolve(self, i: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        outputs = self.outputs
        for field, source_index, source_field in self.graph.bindings[i]:
            source = self.inputs if source_index == INPUT else outputs[source_index]
            if source is not None:
                value = source.get(source_field)
                if value is not None:
                    values[field] = value
        return values

    async def _module(self, i: int, inputs: dict[str, Any]) -> None:
        self._entered[i] = True
        clock = self._clock
        spec = self.specs[i]
        try:
            if self.resources is not None and spec.resources:
                queued = clock()
                async with self.resources.acquire(spec.resources):
                    self.started[i] = now = clock()
                    self.wait[i] = now - queued
                    self._store(i, spec, await self._call(i, spec, inputs))
            else:
                self.started[i] = clock()
                self._store(i, spec, await self._call(i, spec, inputs))
        except asyncio.CancelledError as exc:
            self.errors[i] = exc
            raise
        except Exception as exc:
            self.errors[i] = exc
        finally:
            self.ended[i] = clock()
            self._ended(i)

    def _call(self, i: int, spec: ModuleSpec, inputs: dict[str, Any]) -> Awaitable[ModuleResult]:
        """Validate the inputs and start the call under its policy (the caller awaits it).

        Plain methods around one awaited call keep a coroutine frame off every module's path.
        """
        return self._execute(i, spec, self.signatures[i].validate_inputs(inputs))

    def _execute(
        self, i: int, spec: ModuleSpec, validated: dict[str, Any]
    ) -> Awaitable[ModuleResult]:
        """Start module ``i`` on validated inputs under its timeout and retry policy."""
        name = self.graph.names[i]
        attempts = self.attempts[i] = Attempts()
        call = functools.partial(
            self.kinds.call, self.program, name, spec, self.signatures[i], validated
        )
        return self.executor(
            call,
            policy=module_policy(spec, self.kinds.backends, self.default_retry),
            attempt_timeout=spec.timeout,
            attempts=attempts,
            label=f"module {name!r}",
        )

    def _store(self, i: int, spec: ModuleSpec, result: ModuleResult) -> None:
        """Validate a module's outputs and keep them with its usage."""
        signature = self.signatures[i]
        names = self._output_names[i]
        raw = result.outputs
        # Extra keys (an undeclared ``reasoning``) are dropped before validation, which forbids
        # them; the usual answer has none and is validated as it is.
        outputs = signature.validate_outputs(
            raw if raw.keys() <= names else {k: raw[k] for k in signature.output_names if k in raw}
        )
        if spec.kind == "chain_of_thought" and "reasoning" not in names:
            reasoning = result.extras.get("reasoning", raw.get("reasoning"))
            if reasoning is not None:
                outputs["reasoning"] = reasoning
        self.usage[i] = result.usage
        self.outputs[i] = outputs
        if result.attempts:  # a coordinator group answered: keep each backend attempt
            self.details[i] = result.attempts

    # ------------------------------------------------------------------------ reporting

    def step(self, i: int) -> StepResult:
        """The result of module ``i`` as of now (times in ms from :attr:`t0`)."""
        # never reached a final state: the run was torn down around it
        status = _STATUS.get(self.scheduler.state[i], StepStatus.CANCELLED)
        code: str | None = None
        message: str | None = None
        if status is not StepStatus.COMPLETED:
            code, message = self._why(i, status)
        started = self.started[i]
        ended = self.ended[i]
        attempts = self.attempts[i]
        count = attempts.count if attempts is not None else 0
        details = self.details.get(i, ())
        error = self.errors[i]
        if not details and error is not None:
            details = attempts_of(error)  # a failed coordinator call says what it tried
        if details:
            count = max(count, len(details))
        usage = self.usage[i]
        wait = self.wait[i]
        spec = self.specs[i]
        t0 = self.t0
        # whole microseconds: float clock dust (0.4 - 0.3) would otherwise leak into reports
        started_ms = round((started - t0) * 1000.0, 3) if started is not None else None
        ended_ms = round((ended - t0) * 1000.0, 3) if ended is not None else None
        return StepResult(
            name=self.graph.names[i],
            kind=spec.kind,
            status=status,
            error_code=code,
            error_message=message,
            started_ms=started_ms,
            ended_ms=ended_ms,
            duration_ms=round(ended_ms - started_ms, 3)
            if started_ms is not None and ended_ms is not None
            else 0.0,
            wait_ms=round(wait * 1000.0, 3) if wait else 0.0,
            attempts=count,
            usage=dict(usage) if usage else {},
            outputs=self.outputs[i],
            backend=self._backends[i],
            attempt_details=details,
        )

    def _why(self, i: int, status: StepStatus) -> tuple[str | None, str | None]:
        """The error code and message of a module that did not complete."""
        error = self.errors[i]
        if status is StepStatus.FAILED and error is not None:
            return error_code(error), str(error) or type(error).__name__
        if status is StepStatus.SKIPPED:
            blocker = self.graph.names[self.scheduler.blocked_by[i]]
            return "dependency_failed", f"skipped: dependency {blocker!r} failed"
        if status is StepStatus.CANCELLED:
            return "cancelled", "cancelled before it finished"
        return None, None


class _OneModule:
    """The scheduler state of a one-module run (what :class:`Runner` and the engine read)."""

    __slots__ = ("aborted", "blocked_by", "failures", "state")

    def __init__(self) -> None:
        self.state = [_PENDING]
        self.blocked_by = [-1]
        self.failures = 0
        self.aborted = False


class SingleRunner(Runner):
    """Runs a program of exactly one module: no scheduler, no task, no wake-ups.

    Same results, records and hooks as :class:`Runner` (the engine picks it for one-module
    graphs); the module runs in the run's own task, and when the program and module
    signatures agree (see ``_Static``) the inputs and outputs are validated once, not twice.
    """

    __slots__ = ()

    def _init_state(self, n: int, plan: Plan, strategy: str) -> None:
        self.scheduler = _OneModule()  # type: ignore[assignment]  # the state Runner reads
        self.started = [None]
        self.ended = [None]
        self.wait = [0.0]
        self.attempts = [None]
        self.outputs = [None]
        self.usage = [None]
        self.errors = [None]
        self._entered = [False]

    @property
    def outputs_checked(self) -> bool:
        """The module's validated outputs are the program's (no second validation)."""
        return self._static_info.outputs_checked

    def result_steps(self) -> tuple[tuple[StepResult, ...], Mapping[str, Usage] | None]:
        step = self.final.get(0) or self.step(0)
        return (step,), step.usage  # one step: its usage is the total

    async def run(self) -> None:
        """Run the module to a final state (see :meth:`Runner.run`)."""
        loop = asyncio.get_running_loop()
        self._clock = loop.time
        self.t0 = loop.time()
        state = self.scheduler.state
        inputs = dict(self.inputs) if self._static_info.inputs_checked else self._resolve(0)
        hooks = self.hooks
        if self._before_step:
            await hooks.call(
                "before_step",
                run_id=self.run_id,
                module=self.graph.names[0],
                kind=self.specs[0].kind,
                inputs=inputs,
            )
        after_step = hooks.has("after_step")
        state[0] = _RUNNING
        try:
            await self._module(0, inputs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                state[0] = _CANCELLED
                if after_step:
                    await hooks.call("after_step", run_id=self.run_id, step=self.step(0))
                raise
            # the module raised it itself and, as in a task of its own, simply ended cancelled
        error = self.errors[0]
        sched = self.scheduler
        if self.outputs[0] is not None:
            state[0] = _COMPLETED
        elif error is None or isinstance(error, asyncio.CancelledError):
            state[0] = _CANCELLED
        else:
            state[0] = _FAILED
            sched.failures = 1
            sched.aborted = not self.program.spec.failure_tolerance.allows(1)
        if after_step:
            step = self.final[0] = self.step(0)
            await hooks.call("after_step", run_id=self.run_id, step=step)

    def _ended(self, i: int) -> None:
        pass  # nothing waits for the module: run() goes on when it returns

    def _call(self, i: int, spec: ModuleSpec, inputs: dict[str, Any]) -> Awaitable[ModuleResult]:
        if not self._static_info.inputs_checked:
            return super()._call(i, spec, inputs)
        # the program signature validated these very inputs (see _Static)
        return self._execute(i, spec, inputs)

"""Running a graph: a scheduler that decides what is ready (no I/O) and a runner that does the I/O.

:class:`Scheduler` is a plain state machine over module indices. It knows the strategy
(``sequential``: one at a time in plan order; ``parallel``: level by level with a barrier;
``optimized``/``resource_aware``: a module is ready as soon as its own dependencies completed,
longest remaining path first) and the failure tolerance (which failures skip dependents and which
abort the run).

:class:`Runner` starts one task per ready module inside an :class:`asyncio.TaskGroup`, so leaving
the run for any reason (abort, a hook error, outside cancellation) cancels and awaits every module
still running; resources are held through ``async with`` and so are released on every path.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dspex.engine.graph import INPUT, Graph
from dspex.engine.policy import Attempts, CallExecutor
from dspex.engine.results import StepResult
from dspex.engine.spec import FailureTolerance, ModuleSpec, RetrySpec
from dspex.errors import error_code
from dspex.records import StepStatus

if TYPE_CHECKING:
    from dspex.backends.base import Usage
    from dspex.engine.analysis import Plan
    from dspex.engine.kinds import KindRunner
    from dspex.engine.program import Program
    from dspex.engine.resources import ResourceManager
    from dspex.hooks import HookDispatcher
    from dspex.signatures.signature import Signature

__all__ = ["Runner", "Scheduler"]

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
        if strategy in ("optimized", "resource_aware"):
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


class Runner:
    """Runs one program graph once; fills per-module records for the engine to report.

    The engine builds it with everything resolved; :meth:`run` returns when every module reached
    a final state, raising only for outside cancellation or a hook error.
    """

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
        n = len(graph)
        self.specs: Sequence[ModuleSpec] = tuple(program.modules.values())
        self.signatures: Sequence[Signature] = tuple(
            program.module_signature(name) for name in graph.names
        )
        self.resources = resources if strategy == "resource_aware" else None
        self.scheduler = Scheduler(graph, plan, strategy, program.spec.failure_tolerance)
        self.order = plan.order_by_index
        self.started: list[float | None] = [None] * n
        self.ended: list[float | None] = [None] * n
        self.wait: list[float] = [0.0] * n
        self.attempts: list[Attempts | None] = [None] * n
        self.outputs: list[dict[str, Any] | None] = [None] * n
        self.usage: list[Mapping[str, Usage] | None] = [None] * n
        self.errors: list[BaseException | None] = [None] * n
        self._done: deque[int] = deque()
        self._wake = asyncio.Event()
        self._tasks: dict[asyncio.Task[None], int] = {}
        self.t0 = 0.0
        self._unreported: dict[int, None] = {}  # started, after_step not yet called

    async def run(self) -> None:
        """Run every module to a final state.

        Raises:
            asyncio.CancelledError: the run was cancelled from outside (modules are cancelled).
            Exception: a hook raised (modules are cancelled, the error propagates).
        """
        sched = self.scheduler
        self.t0 = asyncio.get_running_loop().time()
        after_step = self.hooks.has("after_step")
        try:
            await self._loop(sched, after_step)
        except asyncio.CancelledError:
            # Cancelled from outside: the group has cancelled and awaited every module; the
            # started ones still get their after_step so records are not left dangling.
            if after_step:
                for i in list(self._unreported):
                    step = self.step(i)
                    await self.hooks.call("after_step", run_id=self.run_id, step=step)
            raise

    async def _loop(self, sched: Scheduler, after_step: bool) -> None:
        fatal: BaseException | None = None
        async with asyncio.TaskGroup() as group:
            try:
                while True:
                    for i in sched.take():
                        await self._start(group, i)
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
                            await self.hooks.call(
                                "after_step", run_id=self.run_id, step=self.step(i)
                            )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Raised inside the TaskGroup body it would come out as an ExceptionGroup; keep
                # it plain: cancel the modules, let the group await them, raise it afterwards.
                fatal = exc
                for task in self._tasks:
                    task.cancel()
        if fatal is not None:
            raise fatal

    async def _start(self, group: asyncio.TaskGroup, i: int) -> None:
        inputs = self._resolve(i)
        if self.hooks.has("before_step"):
            await self.hooks.call(
                "before_step",
                run_id=self.run_id,
                module=self.graph.names[i],
                kind=self.specs[i].kind,
                inputs=inputs,
            )
        task = group.create_task(self._module(i, inputs))
        self._unreported[i] = None
        self._tasks[task] = i
        task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        # A done callback fires even for a task cancelled before its coroutine ever ran.
        self._done.append(self._tasks.pop(task))
        self._wake.set()

    def _finish(self, i: int) -> None:
        sched = self.scheduler
        error = self.errors[i]
        if self.outputs[i] is not None:
            sched.complete(i)
        elif error is None or isinstance(error, asyncio.CancelledError):
            sched.cancelled(i)
        elif sched.fail(i):
            for task in self._tasks:
                task.cancel()

    def _resolve(self, i: int) -> dict[str, Any]:
        values: dict[str, Any] = {}
        outputs = self.outputs
        for binding in self.graph.bindings[i]:
            if binding.source == INPUT:
                source: Mapping[str, Any] | None = self.inputs
            else:
                source = outputs[binding.source]
            if source is not None and binding.source_field in source:
                value = source[binding.source_field]
                if value is not None:
                    values[binding.field] = value
        return values

    async def _module(self, i: int, inputs: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        spec = self.specs[i]
        try:
            if self.resources is not None and spec.resources:
                queued = loop.time()
                async with self.resources.acquire(spec.resources):
                    self.started[i] = now = loop.time()
                    self.wait[i] = now - queued
                    await self._work(i, spec, inputs)
            else:
                self.started[i] = loop.time()
                await self._work(i, spec, inputs)
        except asyncio.CancelledError as exc:
            self.errors[i] = exc
            raise
        except Exception as exc:
            self.errors[i] = exc
        finally:
            self.ended[i] = loop.time()

    async def _work(self, i: int, spec: ModuleSpec, inputs: dict[str, Any]) -> None:
        signature = self.signatures[i]
        name = self.graph.names[i]
        validated = signature.validate_inputs(inputs)
        attempts = self.attempts[i] = Attempts()
        kinds = self.kinds
        program = self.program

        def call() -> Any:
            return kinds.call(program, name, spec, signature, validated)

        result = await self.executor(
            call,
            policy=spec.retry or self.default_retry,
            attempt_timeout=spec.timeout,
            attempts=attempts,
            label=f"module {name!r}",
        )
        names = signature.output_names
        raw = result.outputs
        outputs = signature.validate_outputs({k: raw[k] for k in names if k in raw})
        if spec.kind == "chain_of_thought" and "reasoning" not in names:
            reasoning = result.extras.get("reasoning", raw.get("reasoning"))
            if reasoning is not None:
                outputs["reasoning"] = reasoning
        self.usage[i] = result.usage
        self.outputs[i] = outputs

    # ------------------------------------------------------------------------ reporting

    def step(self, i: int) -> StepResult:
        """The result of module ``i`` as of now (times in ms from :attr:`t0`)."""
        sched = self.scheduler
        status = sched.status(i)
        if status is None:  # never reached a final state: the run was torn down around it
            status = StepStatus.CANCELLED
        code: str | None = None
        message: str | None = None
        error = self.errors[i]
        if status is StepStatus.FAILED and error is not None:
            code, message = error_code(error), str(error) or type(error).__name__
        elif status is StepStatus.SKIPPED:
            blocker = self.graph.names[sched.blocked_by[i]]
            code, message = "dependency_failed", f"skipped: dependency {blocker!r} failed"
        elif status is StepStatus.CANCELLED:
            code, message = "cancelled", "cancelled before it finished"
        started = self.started[i]
        ended = self.ended[i]
        attempts = self.attempts[i]
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
            wait_ms=round(self.wait[i] * 1000.0, 3),
            attempts=attempts.count if attempts is not None else 0,
            usage=dict(self.usage[i] or {}),
            outputs=self.outputs[i],
            backend=spec.backend_name if spec.kind not in ("python", "retrieve") else None,
        )

"""Running a graph: a scheduler that decides what is ready (no I/O) and a runner that does the I/O.

:class:`Scheduler` is a plain state machine over module indices. It knows the strategy
(``sequential``: one at a time in plan order; ``parallel``: level by level with a barrier;
``optimized``/``resource_aware``: a module is ready as soon as its own dependencies completed,
longest remaining path first) and the failure tolerance (which failures skip dependents and which
abort the run).

:class:`Runner` runs one program once, whatever its size. A module that would run alone (nothing
else running, nothing else ready) runs in the run's own task: a one-module program, a chain and
the ``sequential`` strategy need no task at all. As soon as two modules can run side by side they
run as tasks of an :class:`asyncio.TaskGroup`, so however the run ends (completion, a strict
failure, a hook error, outside cancellation) no module outlives it: a failure past the tolerance
leaves the group, and the group cancels and awaits every module still running. Resources are held
through ``async with`` and so are released on every path.

:class:`Layout` is what every run of one program shares (specs, signatures, the default plan's
scheduler); the engine builds it once per program and keeps it while the program lives.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dspex._strategies import PRIORITISED_STRATEGIES
from dspex.engine.graph import INPUT, Graph
from dspex.engine.policy import Attempts, CallExecutor, default_timeout, module_policy
from dspex.engine.results import CHILDREN_ATTRIBUTE, StepResult
from dspex.engine.spec import FailureTolerance, ModuleSpec, RetrySpec
from dspex.errors import ValidationError, error_code, is_retryable
from dspex.records import StepStatus
from dspex.resilience.coordinator import attempts_of

if TYPE_CHECKING:
    from dspex._strategies import CacheMode
    from dspex.backends.base import BackendAttempt, LMExchange, Usage
    from dspex.capture import Capture
    from dspex.engine.analysis import Plan
    from dspex.engine.kinds import KindRunner, ModuleResult
    from dspex.engine.program import Program
    from dspex.engine.resources import ResourceManager
    from dspex.hooks import HookDispatcher
    from dspex.resilience.cache import ResponseCache
    from dspex.signatures.signature import Signature

__all__ = ["Layout", "Runner", "Scheduler"]

_PENDING, _READY, _RUNNING = 0, 1, 2
_COMPLETED, _FAILED, _SKIPPED, _CANCELLED = 3, 4, 5, 6
_STATUS = {
    _COMPLETED: StepStatus.COMPLETED,
    _FAILED: StepStatus.FAILED,
    _SKIPPED: StepStatus.SKIPPED,
    _CANCELLED: StepStatus.CANCELLED,
}


_NONE_BLOCKED: Mapping[int, int] = MappingProxyType({})  # shared until a module is skipped


class Scheduler:
    """Which modules may start now, given what finished. Pure: no I/O, no clock, no tasks.

    Args:
        graph: the validated graph.
        plan: its plan (order, levels, remaining path lengths).
        strategy: ``sequential``, ``parallel``, ``optimized`` or ``resource_aware``.
        tolerance: the failure tolerance.

    A scheduler serves one run; :meth:`fresh` gives another in the initial state, sharing what
    never changes (keys, dependents), which is how runs of one program start without redoing it.
    """

    __slots__ = (
        "_barrier",
        "_dependents",
        "_heap",
        "_held",
        "_key",
        "_level",
        "_level_left",
        "_level_of",
        "_limit",
        "_tolerance",
        "_waiting",
        "aborted",
        "blocked_by",
        "failures",
        "running",
        "state",
        "unfinished",
    )

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
        self.blocked_by: Mapping[int, int] = _NONE_BLOCKED  # a skipped module -> its blocker
        self.failures = 0
        self.aborted = False
        self.running = 0
        self.unfinished = n  # modules not yet in a final state
        self._waiting = [len(d) for d in graph.deps]
        self._heap: list[tuple[tuple[float, int], int]] = []
        self._level_of = plan.level_of
        self._level = 0
        # level bookkeeping only matters behind a barrier
        self._level_left = [len(level) for level in plan.levels] if self._barrier else []
        self._held: list[list[int]] = [[] for _ in plan.levels] if self._barrier else []
        for i in range(n):
            if self._waiting[i] == 0:
                self._make_ready(i)

    def fresh(self) -> Scheduler:
        """A scheduler in the state this one was built in (call it on one that never ran)."""
        new = object.__new__(Scheduler)
        new._dependents = self._dependents
        new._tolerance = self._tolerance
        new._limit = self._limit
        new._barrier = self._barrier
        new._key = self._key
        new._level_of = self._level_of
        new.state = self.state.copy()
        new.blocked_by = _NONE_BLOCKED
        new.failures = 0
        new.aborted = False
        new.running = 0
        new.unfinished = self.unfinished
        new._waiting = self._waiting.copy()
        new._heap = self._heap.copy()
        new._level = 0
        if self._barrier:
            new._level_left = self._level_left.copy()
            new._held = [held.copy() for held in self._held]
        else:  # never touched without a barrier: shared
            new._level_left = self._level_left
            new._held = self._held
        return new

    @property
    def finished(self) -> bool:
        """Every module reached a final state."""
        return self.unfinished == 0

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
        self.state[i] = _COMPLETED
        self.running -= 1
        self.unfinished -= 1
        if self._barrier:
            self._level_ended(i)
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
        self._skip_dependents(i)
        if not self.aborted and not self._tolerance.allows(self.failures):
            self.abort()
        return self.aborted

    def cancelled(self, i: int) -> None:
        """Running module ``i`` was cancelled: what depends on it is skipped (it has no outputs
        to give them), but it is no failure."""
        self._end(i, _CANCELLED)
        self._skip_dependents(i)

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

    def _skip_dependents(self, i: int) -> None:
        blocked = self.blocked_by if isinstance(self.blocked_by, dict) else {}
        self.blocked_by = blocked
        stack = [i]
        while stack:
            for c in self._dependents[stack.pop()]:
                # a dependent of an unfinished module cannot be ready yet: it waited for this one
                if self.state[c] == _PENDING:
                    blocked[c] = i
                    self._end(c, _SKIPPED, was_running=False)
                    stack.append(c)

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
        self.unfinished -= 1
        if self._barrier:
            self._level_ended(i)

    def _level_ended(self, i: int) -> None:
        """Module ``i`` ended behind a barrier: open the next levels whose modules all ended."""
        self._level_left[self._level_of[i]] -= 1
        while self._level < len(self._level_left) and self._level_left[self._level] == 0:
            self._level += 1
            if self._level < len(self._held):
                for j in self._held[self._level]:
                    if self.state[j] == _PENDING:
                        self._make_ready(j)
                self._held[self._level].clear()


class Layout:
    """What every run of one program shares, computed once (the engine keeps it per program).

    It holds neither the program nor its graph, so a cache keyed by the graph (the engine's
    ``WeakKeyDictionary``) lets both go when the caller drops the program.

    Attributes:
        specs: module specs in graph index order.
        signatures: each module's signature.
        backends: each module's backend name (``None`` for kinds that use none).
        labels: each module as retry and timeout errors name it.
        output_names: each module's declared output names.
        as_given: per module, whether its inputs are the program's validated inputs as they are:
            same signature as the program, each input read from the program input of the same
            name; such a module's inputs are not validated a second time.
        outputs_from: the module whose validated outputs are the program's outputs as they are
            (same signature, every output mapped from it by name, no added ``reasoning``), or
            ``None``; the engine then does not validate them a second time.
        plan: the program's default plan (no recorded durations).
        cache_modes: whether any module names its own response cache mode.
        sensitive: the names of the fields its signatures (the program's and its modules')
            mark ``sensitive``: redacted wherever a run is traced.
    """

    __slots__ = (
        "_schedulers",
        "_tolerance",
        "as_given",
        "backends",
        "cache_modes",
        "labels",
        "output_names",
        "outputs_from",
        "plan",
        "sensitive",
        "signatures",
        "specs",
    )

    def __init__(self, program: Program, graph: Graph) -> None:
        self.specs: tuple[ModuleSpec, ...] = tuple(program.modules.values())
        self.backends = tuple(
            spec.backend_name if spec.kind not in ("python", "retrieve") else None
            for spec in self.specs
        )
        self.signatures: tuple[Signature, ...] = tuple(
            program.module_signature(name) for name in graph.names
        )
        self.output_names = tuple(frozenset(sig.output_names) for sig in self.signatures)
        self.labels = tuple(f"module {name!r}" for name in graph.names)  # in policy errors
        contract = program.signature
        same = [sig == contract for sig in self.signatures]
        self.as_given = tuple(
            same[i] and all(b.source == INPUT and b.field == b.source_field for b in bindings)
            for i, bindings in enumerate(graph.bindings)
        )
        self.outputs_from: int | None = None
        sources = {b.source for b in graph.outputs}
        if len(sources) == 1:
            (j,) = sources
            if (
                j != INPUT
                and same[j]
                and self.specs[j].kind != "chain_of_thought"
                and len(graph.outputs) == len(self.signatures[j].output_names)
                and all(b.field == b.source_field for b in graph.outputs)
            ):
                self.outputs_from = j
        self.plan = program.plan()
        self.sensitive = frozenset(
            f.name
            for sig in (program.signature, *self.signatures)
            for f in sig.fields
            if f.sensitive
        )
        self._tolerance = program.spec.failure_tolerance
        self.cache_modes = any(spec.cache is not None for spec in self.specs)
        self._schedulers: dict[str, Scheduler] = {}  # per strategy, for the default plan

    def scheduler(self, graph: Graph, plan: Plan, strategy: str) -> Scheduler:
        """A scheduler in its initial state for one run of ``plan`` with ``strategy``."""
        if plan is not self.plan:  # recorded durations: a plan of its own, used once
            return Scheduler(graph, plan, strategy, self._tolerance)
        template = self._schedulers.get(strategy)
        if template is None:
            template = self._schedulers[strategy] = Scheduler(
                graph, plan, strategy, self._tolerance
            )
        return template.fresh()


class _Aborted(Exception):
    """Raised inside the run's task group when a failure exceeds the tolerance: leaving the
    group cancels and awaits every module still running."""


class Runner:
    """Runs one program graph once; fills per-module records for the engine to report.

    The engine builds it with everything resolved; :meth:`run` returns when every module reached
    a final state, raising only for outside cancellation or a hook error.
    """

    # while modules run side by side (see _together)
    _done: deque[int]  # modules that ended, in order, for the loop to account for
    _wake: asyncio.Event  # set when a module ends
    _entered: list[bool]  # whether a module's task began running

    # One runner per run: slots keep its attributes out of a per-run dict.
    __slots__ = (
        "_after_step",
        "_before_step",
        "_clock",
        "_done",
        "_entered",
        "_unreported",
        "_wake",
        "attempts",
        "cache",
        "cache_default",
        "cache_run",
        "cached",
        "capture",
        "children",
        "default_retry",
        "default_timeout",
        "details",
        "ended",
        "errors",
        "exchanges",
        "executor",
        "final",
        "graph",
        "hooks",
        "inputs",
        "kinds",
        "layout",
        "module_inputs",
        "order",
        "outputs",
        "program",
        "redacted",
        "resources",
        "run_id",
        "scheduler",
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
        layout: Layout,
        plan: Plan,
        strategy: str,
        kinds: KindRunner,
        executor: CallExecutor,
        resources: ResourceManager | None,
        hooks: HookDispatcher,
        before_step: bool,
        after_step: bool,
        run_id: str,
        inputs: Mapping[str, Any],
        default_retry: RetrySpec,
        default_timeout: float | None = None,
        cache: ResponseCache | None = None,
        cache_run: CacheMode | None = None,
        cache_default: CacheMode | None = None,
        capture: Capture | None = None,
    ) -> None:
        self.program = program
        self.graph = graph
        self.layout = layout
        self.kinds = kinds
        self.executor = executor
        self.hooks = hooks
        self.run_id = run_id
        self.inputs = inputs
        self.default_retry = default_retry
        self.default_timeout = default_timeout
        self.resources = resources if strategy == "resource_aware" else None
        self.order = plan.order_by_index
        self.scheduler = layout.scheduler(graph, plan, strategy)
        n = len(graph.names)
        self.started: list[float | None] = [None] * n
        self.ended: list[float | None] = [None] * n
        self.wait: list[float] = [0.0] * n
        self.attempts: list[Attempts | None] = [None] * n
        self.outputs: list[dict[str, Any] | None] = [None] * n
        self.usage: list[Mapping[str, Usage] | None] = [None] * n
        self.errors: list[BaseException | None] = [None] * n
        self.details: dict[int, tuple[BackendAttempt, ...]] = {}  # coordinator attempts, if any
        # what traces record (None: nothing beyond status, timing and usage)
        self.capture = capture if capture is not None and capture.enabled else None
        self.redacted = capture.names(layout.sensitive) if capture is not None else frozenset()
        self.module_inputs: list[Mapping[str, Any] | None] | None = (
            [None] * n if self.capture is not None else None
        )
        self.exchanges: dict[int, LMExchange] = {}  # each module's last LM exchange, if any
        # a dspy module's predictor calls, timed from when it returned (StepResult.shifted)
        self.children: dict[int, tuple[StepResult, ...]] = {}
        self.final: dict[int, StepResult] = {}  # steps already reported in their final state
        # no cache path at all when no module of this run can use it (the usual run)
        self.cache = (
            cache
            if cache is not None
            and cache_run != "off"
            and (
                cache_run is not None
                or layout.cache_modes
                or cache.backend_modes
                or (cache_default or cache.mode) != "off"
            )
            else None
        )
        self.cache_run: CacheMode | None = cache_run  # the run's own mode, which wins
        self.cache_default: CacheMode | None = cache_default  # the operation's, which loses
        self.cached: dict[int, float] = {}  # modules the cache answered: the cost saved
        self._unreported: dict[int, None] = {}  # started, after_step not yet called
        self._clock: Callable[[], float] = time.monotonic  # the loop's clock once running
        self.t0 = 0.0
        # whether any hook implements each per-module method (hooks are fixed for the run)
        self._before_step = before_step
        self._after_step = after_step

    def program_outputs(self) -> tuple[dict[str, Any], bool]:
        """The program's outputs as the modules gave them, and whether they are validated
        already: one module's validated outputs under an equal signature (see
        :attr:`Layout.outputs_from`), which the engine need not validate again."""
        j = self.layout.outputs_from
        if j is not None:
            produced = self.outputs[j]
            if produced is not None:
                return dict(produced), True
        raw: dict[str, Any] = {}
        inputs = self.inputs
        outputs = self.outputs
        for field, source_index, source_field in self.graph.outputs:
            source = inputs if source_index == INPUT else outputs[source_index]
            if source is not None and source_field in source:
                raw[field] = source[source_field]
        return raw, False

    def retryable(self, name: str) -> bool:
        """Whether module ``name`` failed with an error that may pass when run again."""
        error = self.errors[self.graph.index[name]]
        return error is not None and is_retryable(error)

    def result_steps(self) -> tuple[StepResult, ...]:
        """Every module's step in plan order."""
        final = self.final
        steps: list[StepResult] = []
        for i in self.order:
            steps.append(final.get(i) or self.step(i))
        return tuple(steps)

    def elapsed_ms(self) -> float:
        """Milliseconds since the run started (the loop's clock)."""
        return round((self._clock() - self.t0) * 1000.0, 3)

    async def run(self) -> None:
        """Run every module to a final state.

        Raises:
            asyncio.CancelledError: the run was cancelled from outside (modules are cancelled).
            Exception: a hook raised (modules are cancelled, the error propagates).
        """
        clock = self._clock = asyncio.get_running_loop().time
        self.t0 = clock()
        sched = self.scheduler
        layout = self.layout
        try:
            ready = sched.take()
            while sched.unfinished:
                if len(ready) != 1 or sched.running != 1:
                    ready = await self._together(ready)
                    continue
                # A module that would run alone runs in this task: no task to start, no
                # wake-up, nothing to cancel (an abort it causes leaves nothing running).
                i = ready[0]
                inputs = dict(self.inputs) if layout.as_given[i] else self._resolve(i)
                if self._before_step:
                    await self._before(i, inputs)
                try:
                    await self._module(i, inputs, True)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is None or task.cancelling():
                        self._unreported[i] = None  # reported below
                        raise
                    # the module raised it itself and, as in a task, simply ended cancelled
                if self.outputs[i] is not None:
                    sched.complete(i)
                else:
                    self._finish(i)  # alone: an abort leaves nothing running to cancel
                if self._after_step:
                    await self._after(i)
                if sched.unfinished:
                    ready = sched.take()
        except asyncio.CancelledError:
            # Cancelled from outside: every module has been cancelled and awaited; the started
            # ones still get their after_step so records are not left dangling.
            if self._after_step:
                for i in list(self._unreported):
                    step = self.step(i)
                    await self.hooks.call("after_step", run_id=self.run_id, step=step)
            raise

    async def _together(self, ready: list[int]) -> list[int]:
        """Run modules side by side in a task group until nothing runs and at most one module
        is ready (the run then goes on in its own task); the modules ready then."""
        sched = self.scheduler
        layout = self.layout
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        done = self._done = deque()
        wake = self._wake = asyncio.Event()
        self._entered = [False] * len(self.graph)  # whether a module's task began running
        error: BaseException | None = None
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    for i in ready:
                        inputs = dict(self.inputs) if layout.as_given[i] else self._resolve(i)
                        if self._before_step:
                            await self._before(i, inputs)
                        self._unreported[i] = None
                        group.create_task(self._module(i, inputs, False))
                    if not done:
                        if not sched.running:  # pragma: no cover - a validated graph cannot stall
                            raise RuntimeError("scheduler stalled with nothing running")
                        await wake.wait()
                        wake.clear()
                    while done:
                        i = done[0]
                        if self._finish(i):
                            # Past the tolerance: leaving the group cancels what still runs.
                            # Modules cancelled before their first step never report; they
                            # ended now.
                            done.extend(j for j in self._unreported if not self._entered[j])
                            raise _Aborted
                        done.popleft()
                        del self._unreported[i]
                        if self._after_step:
                            await self._after(i)
                    ready = sched.take()
                    if sched.running == len(ready) <= 1:  # nothing else runs: the group's done
                        return ready
        except BaseExceptionGroup as group_error:
            # Modules keep their own errors, so the one error is this loop's: an abort or a hook.
            error = group_error.exceptions[0]
        if not isinstance(error, _Aborted):
            assert error is not None
            raise error
        if task is not None and task.cancelling() > cancelling:
            # a cancellation that came while the group was cancelling its modules
            raise asyncio.CancelledError
        # The failed module first, then the others in the order they ended.
        first = True
        while done:
            i = done.popleft()
            if not first:
                self._finish(i)
            first = False
            del self._unreported[i]
            if self._after_step:
                await self._after(i)
        return []  # aborted: nothing more starts

    async def _before(self, i: int, inputs: dict[str, Any]) -> None:
        await self.hooks.call(
            "before_step",
            run_id=self.run_id,
            module=self.graph.names[i],
            kind=self.layout.specs[i].kind,
            inputs=inputs,
        )

    async def _after(self, i: int) -> None:
        # final now: kept so the run's result does not build it again
        step = self.final[i] = self.step(i)
        await self.hooks.call("after_step", run_id=self.run_id, step=step)

    def _ended(self, i: int) -> None:
        self._done.append(i)
        self._wake.set()

    def _finish(self, i: int) -> bool:
        """Account for module ``i``'s end in the scheduler; ``True`` when the run must abort."""
        sched = self.scheduler
        if self.outputs[i] is not None:
            sched.complete(i)
            return False
        error = self.errors[i]
        if error is None or isinstance(error, asyncio.CancelledError):
            sched.cancelled(i)
            return False
        return sched.fail(i)

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

    async def _module(self, i: int, inputs: dict[str, Any], alone: bool) -> None:
        if not alone:
            self._entered[i] = True
        clock = self._clock
        spec = self.layout.specs[i]
        try:
            if self.resources is not None and spec.resources:
                queued = clock()
                async with self.resources.acquire(spec.resources):
                    self.started[i] = now = clock()
                    self.wait[i] = now - queued
                    if self.cache is None:
                        self._store(i, spec, await self._call(i, spec, inputs))
                    else:
                        await self._through_cache(i, spec, inputs)
            elif self.cache is None:
                self.started[i] = clock()
                self._store(i, spec, await self._call(i, spec, inputs))
            else:
                self.started[i] = clock()
                await self._through_cache(i, spec, inputs)
        except asyncio.CancelledError as exc:
            self.errors[i] = exc
            raise
        except Exception as exc:
            self.errors[i] = exc
        finally:
            self.ended[i] = clock()
            if not alone:
                self._ended(i)

    def _call(self, i: int, spec: ModuleSpec, inputs: dict[str, Any]) -> Awaitable[ModuleResult]:
        """Start module ``i`` under its timeout and retry policy (the caller awaits it), its
        inputs validated unless they are the program's as they are.

        Plain methods around one awaited call keep a coroutine frame off every module's path.
        """
        signature = self.layout.signatures[i]
        validated = inputs if self.layout.as_given[i] else signature.validate_inputs(inputs)
        if self.module_inputs is not None:
            self.module_inputs[i] = validated
        name = self.graph.names[i]
        attempts = self.attempts[i] = Attempts()
        call = functools.partial(self.kinds.call, self.program, name, spec, signature, validated)
        return self.executor(
            call,
            policy=module_policy(spec, self.kinds.backends, self.default_retry),
            attempt_timeout=default_timeout(spec, self.default_timeout),
            attempts=attempts,
            label=self.layout.labels[i],
        )

    async def _through_cache(self, i: int, spec: ModuleSpec, inputs: dict[str, Any]) -> None:
        """Run module ``i`` with the response cache in front of its backend (see
        :mod:`dspex.resilience.cache`): a hit is validated as an answer would be; a miss calls
        the backend and, in ``read_write`` mode, stores the answer once it passed validation."""
        cache = self.cache
        assert cache is not None
        mode = (
            cache.mode_for(spec.backend_name, spec.cache, self.cache_run, self.cache_default)
            if spec.kind == "predict" or spec.kind == "chain_of_thought"
            else "off"
        )
        if mode == "off":
            self._store(i, spec, await self._call(i, spec, inputs))
            return
        signature = self.layout.signatures[i]
        validated = inputs if self.layout.as_given[i] else signature.validate_inputs(inputs)
        name = self.graph.names[i]
        request = self.kinds.request(name, spec, signature, validated)
        key = cache.key(self.kinds.backends[spec.backend_name], request)
        hit = await cache.lookup(key)
        if hit is not None:
            try:
                self._store(i, spec, hit.result)
            except ValidationError:
                pass  # no longer the module's contract: ask the backend
            else:
                self.cached[i] = hit.cost_usd
                return
        result = await self._call(i, spec, inputs)
        self._store(i, spec, result)  # raises when the answer breaks the contract: not stored
        outputs = self.outputs[i]
        if mode == "read_write" and outputs is not None:
            await cache.save(
                key,
                program=self.program.name,
                module=name,
                backend=spec.backend_name,
                outputs=outputs,
                extras=result.extras,
                usage=result.usage,
                model=getattr(result, "model", None),
            )

    def _store(self, i: int, spec: ModuleSpec, result: ModuleResult) -> None:
        """Validate a module's outputs and keep them with its usage."""
        signature = self.layout.signatures[i]
        names = self.layout.output_names[i]
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
        exchange = getattr(result, "exchange", None)
        if exchange is not None:
            self.exchanges[i] = exchange
        children = getattr(result, "children", None)
        if children:  # a dspy module: the predictor calls made inside it
            self.children[i] = children

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
        children = self.children.get(i, ())
        if not children and error is not None:
            children = getattr(error, CHILDREN_ATTRIBUTE, ())
        usage = self.usage[i]
        wait = self.wait[i]
        t0 = self.t0
        # whole microseconds: float clock dust (0.4 - 0.3) would otherwise leak into reports
        started_ms = round((started - t0) * 1000.0, 3) if started is not None else None
        ended_ms = round((ended - t0) * 1000.0, 3) if ended is not None else None
        if children:  # timed from when the module returned, which is when it ended
            anchor = ended_ms if ended_ms is not None else started_ms or 0.0
            children = tuple(child.shifted(anchor) for child in children)
        timed = attempts.failed if attempts is not None else None
        attempt_times = self._attempt_times(attempts, ended_ms) if timed and not details else ()
        recorded_inputs = recorded_outputs = None
        exchange = self.exchanges.get(i)
        if self.capture is not None:
            recorded_inputs, recorded_outputs, exchange, details, children = self._traced(
                i, exchange, details, children
            )
        else:  # nothing traced: what a dspy module's calls reported is dropped too
            if exchange is not None or details:
                exchange, details = _bare(exchange), tuple(_bare_attempt(a) for a in details)
            if children:
                children = tuple(_untraced_child(child) for child in children)
        return StepResult(
            name=self.graph.names[i],
            kind=self.layout.specs[i].kind,
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
            backend=self.layout.backends[i],
            attempt_details=details,
            children=children,
            cache_hit=i in self.cached,
            cost_saved_usd=self.cached.get(i, 0.0),
            recorded_inputs=recorded_inputs,
            recorded_outputs=recorded_outputs,
            exchange=exchange,
            attempt_times=attempt_times,
        )

    def _attempt_times(
        self, attempts: Attempts | None, ended_ms: float | None
    ) -> tuple[tuple[float, float, str | None], ...]:
        """Each attempt of a module's own retry loop that made several: offsets and error code
        (``None`` for the one that answered)."""
        assert attempts is not None
        assert attempts.failed is not None
        t0 = self.t0
        times: list[tuple[float, float, str | None]] = [
            (round((a - t0) * 1000.0, 3), round((b - t0) * 1000.0, 3), code)
            for a, b, code in attempts.failed
        ]
        last = attempts.last_started
        if len(times) < attempts.count and last is not None and ended_ms is not None:
            times.append((round((last - t0) * 1000.0, 3), ended_ms, None))
        return tuple(times)

    def _traced(
        self,
        i: int,
        exchange: LMExchange | None,
        details: tuple[BackendAttempt, ...],
        children: tuple[StepResult, ...],
    ) -> tuple[
        dict[str, Any] | None,
        dict[str, Any] | None,
        LMExchange | None,
        tuple[BackendAttempt, ...],
        tuple[StepResult, ...],
    ]:
        """What module ``i``'s trace records: its inputs and outputs, its LM exchanges and its
        child steps' (each redacted and size limited once, here, for every consumer)."""
        capture = self.capture
        assert capture is not None
        assert self.module_inputs is not None
        names = self.redacted
        # the text of redacted values, cut out of the messages (a prompt repeats its inputs)
        secrets: list[str] | None = [] if capture.messages and names else None
        inputs = self.module_inputs[i]
        outputs = self.outputs[i]
        recorded_inputs = recorded_outputs = None
        if capture.inputs_outputs or secrets is not None:
            if inputs is not None:
                recorded_inputs = capture.value(inputs, names, secrets)
            if outputs is not None:
                recorded_outputs = capture.value(outputs, names, secrets)
            if not capture.inputs_outputs:
                recorded_inputs = recorded_outputs = None
        kept = secrets or ()
        exchange = _captured(capture, exchange, names, kept)
        details = tuple(
            replace(a, exchange=_captured(capture, a.exchange, names, kept))
            if a.exchange is not None
            else a
            for a in details
        )
        children = tuple(_traced_child(capture, child, names) for child in children)
        return recorded_inputs, recorded_outputs, exchange, details, children

    def _why(self, i: int, status: StepStatus) -> tuple[str | None, str | None]:
        """The error code and message of a module that did not complete."""
        error = self.errors[i]
        if status is StepStatus.FAILED and error is not None:
            return error_code(error), str(error) or type(error).__name__
        if status is StepStatus.SKIPPED:
            blocker = self.scheduler.blocked_by[i]
            how = "was cancelled" if self.scheduler.state[blocker] == _CANCELLED else "failed"
            return "dependency_failed", f"skipped: dependency {self.graph.names[blocker]!r} {how}"
        if status is StepStatus.CANCELLED:
            return "cancelled", "cancelled before it finished"
        return None, None


def _captured(
    capture: Capture, exchange: LMExchange | None, names: frozenset[str], secrets: Any
) -> LMExchange | None:
    """An LM exchange as a trace records it: with its messages and response (redacted, size
    limited) only when they are captured."""
    if exchange is None:
        return None
    if not capture.messages:
        return _bare(exchange)
    return replace(
        exchange,
        messages=capture.exchange(list(exchange.messages), names, secrets),
        response=capture.exchange(exchange.response, names, secrets),
    )


def _bare(exchange: LMExchange | None) -> LMExchange | None:
    """An exchange without its messages and response (what is known of the call stays)."""
    if exchange is None or (not exchange.messages and exchange.response is None):
        return exchange
    return replace(exchange, messages=(), response=None)


def _bare_attempt(attempt: BackendAttempt) -> BackendAttempt:
    if attempt.exchange is None:
        return attempt
    return replace(attempt, exchange=_bare(attempt.exchange))


def _untraced_child(child: StepResult) -> StepResult:
    if (
        child.recorded_inputs is None
        and child.recorded_outputs is None
        and all(a.exchange is None for a in child.attempt_details)
    ):
        return child
    return replace(
        child,
        recorded_inputs=None,
        recorded_outputs=None,
        attempt_details=tuple(_bare_attempt(a) for a in child.attempt_details),
    )


def _traced_child(capture: Capture, child: StepResult, names: frozenset[str]) -> StepResult:
    """A ``dspy`` module's predictor call as a trace records it: the inputs and outputs the
    call was made with and gave (as DSPy reported them) redacted and size limited."""
    secrets: list[str] | None = [] if capture.messages and names else None
    inputs = outputs = None
    if child.recorded_inputs is not None:
        inputs = capture.value(child.recorded_inputs, names, secrets)
    if child.recorded_outputs is not None:
        outputs = capture.value(child.recorded_outputs, names, secrets)
    if not capture.inputs_outputs:
        inputs = outputs = None
    kept = secrets or ()
    details = tuple(
        replace(a, exchange=_captured(capture, a.exchange, names, kept))
        if a.exchange is not None
        else a
        for a in child.attempt_details
    )
    return replace(child, recorded_inputs=inputs, recorded_outputs=outputs, attempt_details=details)

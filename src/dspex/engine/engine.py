"""``Engine``: runs programs in memory with a set of backends, resources and an import allow-list.

Example:
    >>> engine = Engine(backends={"default": MockBackend(latency_ms=20)}, resources={"lm_slots": 8})
    >>> result = await engine.run(program, {"question": "What is DSPy?"})  # doctest: +SKIP
    >>> result.status, result.outputs["answer"]  # doctest: +SKIP

One run: check the program against this engine (graph, backends, allow-list, corpora, resource
needs — every problem at once) → validate the inputs against the program signature → run the
graph with the strategy and failure tolerance → validate the outputs (constraints enforced) →
:class:`RunResult`. Hooks observe each stage (:mod:`dspex.hooks`).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.backends.base import Backend, Usage
from dspex.backends.pricing import PriceTable
from dspex.engine.graph import Graph
from dspex.engine.kinds import KindRunner, ThreadRunner
from dspex.engine.policy import CallExecutor, PolicyCaller
from dspex.engine.resources import ResourceManager
from dspex.engine.results import RunError, RunResult, StepResult
from dspex.engine.runner import Layout, Runner
from dspex.engine.spec import STRATEGIES, RetrySpec, module_retry
from dspex.errors import (
    ConfigError,
    ErrorDetail,
    GraphCycleError,
    GraphError,
    PathNotAllowedError,
    SecurityError,
    ValidationError,
    error_code,
)
from dspex.hooks import HookDispatcher
from dspex.records import ExecutionStatus, StepStatus

if TYPE_CHECKING:
    from dspex._strategies import CacheMode
    from dspex.backends.embeddings import Embedder
    from dspex.capture import Capture
    from dspex.engine.program import Program
    from dspex.resilience.breaker import BreakerRegistry
    from dspex.resilience.cache import ResponseCache

__all__ = ["Engine", "RunResult", "StepResult"]


class _Known:
    """What an engine learnt about one program: the strategies it passed :meth:`Engine.check`
    with, whether its modules' needs are loaded, and the runs' shared :class:`Layout`."""

    __slots__ = ("layout", "prepared", "strategies")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.strategies: set[str] = set()
        self.prepared = False


class Engine:
    """Runs :class:`~dspex.Program` graphs.

    Args:
        backends: backends by name; modules use ``"default"`` unless they name one. Defaults to
            one :class:`~dspex.MockBackend` named ``default``.
        resources: capacities (``{"lm_slots": 8, "memory_mb": 4096}``) or a shared
            :class:`~dspex.engine.resources.ResourceManager`; used by the ``resource_aware``
            strategy.
        resource_bypass: for capacities given as a mapping, how many later requests may be
            admitted ahead of a waiting one (the manager's ``max_bypass``). The default, 4, lets
            small requests fill capacity a large one at the head of the queue cannot use yet
            (97% rather than 90% utilization on a saturated mixed workload) while no request is
            ever starved: once passed 4 times it blocks everyone behind it. ``0`` is strict FIFO.
            A :class:`~dspex.engine.resources.ResourceManager` passed as ``resources`` keeps its
            own setting.
        allowed_imports: module-path prefixes ``python``/``dspy`` modules may import from.
        corpus_dirs: directories ``retrieve`` corpora may be read from (relative ones against
            the working directory). A program's own ``base_dir`` (its file's directory, for
            :meth:`Program.from_file`) is always allowed as well; any other corpus, ``..`` and
            symlinks resolved, is a ``path_not_allowed`` problem.
        embedder: the embedder for ``retrieve`` modules (default: the bundled local model).
        hooks: lifecycle hooks for every run (see :mod:`dspex.hooks`).
        retry: the retry policy of modules that call a backend and declare none (default: one
            attempt; a :class:`~dspex.Runtime` passes its settings' ``[defaults.retry]``).
        timeout: seconds one attempt of a module that calls a backend may take when the module
            declares no ``timeout`` (default: no limit; a runtime passes ``[defaults] timeout``).
        breakers: circuit breakers for the plain backends modules call, keyed by backend name
            (coordinator groups have their own); default none. An open circuit fails the call
            with ``circuit_open`` without calling the backend.
        executor: what runs one module call with its policy (default: :class:`PolicyCaller`);
            the resilience layer plugs in here.
        max_threads: threads for blocking work (sync python modules, corpus loading).
        seed: seeds the retry jitter, for reproducible runs.
        allow_pickle: whether a ``dspy`` module's ``state`` may be a pickled program (a
            directory saved with ``save_program=True``); loading one runs its code.
        prices: what each model's tokens cost, for the recorded runs (default: LiteLLM's cost
            map, see :mod:`dspex.backends.pricing`).
        cache: the response cache in front of ``predict``/``chain_of_thought`` modules'
            backends (``None``: none; see :mod:`dspex.resilience.cache`).
        capture: what each step's trace records (inputs and outputs, LM messages), redacted
            and size limited once (see :mod:`dspex.capture`); default: nothing (a
            :class:`~dspex.Runtime` passes its ``[capture]`` settings).
    """

    def __init__(
        self,
        backends: Mapping[str, Backend] | None = None,
        *,
        resources: Mapping[str, float] | ResourceManager | None = None,
        resource_bypass: int = 4,
        allowed_imports: Sequence[str] = (),
        corpus_dirs: Sequence[str | os.PathLike[str]] = (),
        embedder: Embedder | None = None,
        hooks: Sequence[object] = (),
        retry: RetrySpec | Mapping[str, Any] | None = None,
        timeout: float | None = None,
        breakers: BreakerRegistry | None = None,
        executor: CallExecutor | None = None,
        max_threads: int = 8,
        seed: int | None = None,
        allow_pickle: bool = False,
        prices: PriceTable | None = None,
        cache: ResponseCache | None = None,
        capture: Capture | None = None,
    ) -> None:
        if isinstance(allowed_imports, str):
            raise ConfigError("allowed_imports must be a sequence of prefixes, not one string")
        if isinstance(corpus_dirs, str | os.PathLike):
            raise ConfigError("corpus_dirs must be a sequence of directories, not one path")
        if backends is None:
            from dspex.backends.mock import MockBackend

            backends = {"default": MockBackend()}
        self.backends: Mapping[str, Backend] = dict(backends)
        self.prices = prices if prices is not None else PriceTable()
        self.cache = cache
        self.capture = capture
        self.resources = (
            resources
            if isinstance(resources, ResourceManager)
            else ResourceManager(resources or {}, max_bypass=resource_bypass)
        )
        self.allowed_imports = tuple(allowed_imports)
        self.hooks = tuple(hooks)
        self.default_retry = RetrySpec.from_mapping(module_retry(retry or {}))
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.default_timeout = timeout
        self.breakers = breakers
        self.executor: CallExecutor = executor or PolicyCaller(random.Random(seed))
        self._threads = ThreadRunner(max_threads)
        self.corpus_dirs = tuple(Path(d).resolve() for d in corpus_dirs)
        self._kinds = KindRunner(
            self.backends,
            self.allowed_imports,
            embedder,
            self._threads,
            corpus_dirs=self.corpus_dirs,
            allow_pickle=allow_pickle,
            breakers=breakers,
        )
        # Programs that passed check(), keyed by their graph (built once per program and only
        # for a valid one): a batch runs one program thousands of times, and checking once is
        # enough because nothing check() reads (backends, allow-list, the immutable program)
        # changes. Weak keys: an entry goes with its program.
        self._known: weakref.WeakKeyDictionary[Graph, _Known] = weakref.WeakKeyDictionary()
        # for runs without per-run hooks, with which of its methods any hook implements
        self._dispatch = HookDispatcher(self.hooks)
        self._implemented = _implemented(self._dispatch)

    # ------------------------------------------------------------------------ checking

    def validate(self, program: Program, *, strategy: str | None = None) -> list[ErrorDetail]:
        """Every problem that would stop ``program`` from running here (empty when none).

        Graph problems (references, types, cycles, outputs), unknown backends, imports outside
        the allow-list, corpus files outside the allowed directories (``path_not_allowed``) or
        missing and, for ``resource_aware`` runs, needs above capacity.
        """
        return self._problems(program, strategy)[1]

    def calls_dspy_lm(self, program: Program) -> bool:
        """Whether a run of ``program`` calls a ``dspy.LM`` (see
        :meth:`dspex.Runtime.calls_dspy_lm`)."""
        return self._kinds.calls_dspy_lm(program)

    def check(self, program: Program, *, strategy: str | None = None) -> None:
        """Raise if ``program`` cannot run here.

        Raises:
            SecurityError: a ``python``/``dspy`` reference is outside ``allowed_imports`` (the
                message lists every problem).
            PathNotAllowedError: a ``retrieve`` corpus is outside ``corpus_dirs`` and the
                program's own directory (a :class:`SecurityError`).
            GraphCycleError: the graph has a cycle (``errors`` lists every problem).
            GraphError: anything else (``errors`` lists every problem).
        """
        cycle, problems = self._problems(program, strategy)
        if not problems:
            return
        summary = "; ".join(f"{p.field}: {p.message}" for p in problems[:5])
        if len(problems) > 5:
            summary += f" (and {len(problems) - 5} more)"
        if any(p.code == "import_not_allowed" for p in problems):
            raise SecurityError(f"program {program.name!r} cannot run: {summary}")
        if any(p.code == "path_not_allowed" for p in problems):
            raise PathNotAllowedError(f"program {program.name!r} cannot run: {summary}")
        if cycle is not None:
            raise GraphCycleError(cycle.cycle, errors=problems)
        raise GraphError(f"program {program.name!r} cannot run: {summary}", problems)

    async def prepare(self, program: Program, *, strategy: str | None = None) -> None:
        """Check ``program`` and load what its modules need, so its first runs pay nothing.

        Imports ``python`` functions and instantiates ``dspy`` module classes, and for
        ``retrieve`` modules loads the embedding model and embeds the corpus (once per engine
        and corpus file). :meth:`run` does the same lazily; calling this first moves the cost
        out of the first runs.

        Raises:
            SecurityError, GraphError, GraphCycleError: the program cannot run here.
            ModuleError: a reference cannot be imported or instantiated.
        """
        known, _ = self._check_once(program, self._strategy(program, strategy))
        if not known.prepared:
            await self._kinds.prepare(program)
            known.prepared = True

    def _check_once(self, program: Program, strategy: str) -> tuple[_Known, Graph]:
        """:meth:`check` ``program`` unless it passed with ``strategy`` before; what this engine
        knows about it, and its graph."""
        try:
            graph = program.graph
        except GraphError:
            self.check(program, strategy=strategy)  # raises, with every problem
            raise
        known = self._known.get(graph)
        if known is None or strategy not in known.strategies:
            self.check(program, strategy=strategy)
            if known is None:
                known = self._known[graph] = _Known(Layout(program, graph))
            known.strategies.add(strategy)
        return known, graph

    def _problems(
        self, program: Program, strategy: str | None
    ) -> tuple[GraphCycleError | None, list[ErrorDetail]]:
        problems: list[ErrorDetail] = []
        cycle: GraphCycleError | None = None
        try:
            program.graph  # noqa: B018 - building it is the validation
        except GraphCycleError as exc:
            cycle = exc
            problems.extend(exc.errors)
        except GraphError as exc:
            problems.extend(exc.errors)
        problems.extend(self._kinds.check(program))
        if self._strategy(program, strategy) == "resource_aware":
            for name, spec in program.modules.items():
                for p in self.resources.check(spec.resources):
                    problems.append(
                        ErrorDetail(f"modules.{name}.resources.{p.field}", p.code, p.message)
                    )
        return cycle, problems

    @staticmethod
    def _strategy(program: Program, strategy: str | None) -> str:
        chosen = strategy or program.spec.strategy
        if chosen not in STRATEGIES:
            raise ConfigError(f"unknown strategy {chosen!r}; use one of {', '.join(STRATEGIES)}")
        return chosen

    # ------------------------------------------------------------------------ running

    async def run(
        self,
        program: Program,
        inputs: Mapping[str, Any],
        *,
        strategy: str | None = None,
        run_id: str | None = None,
        hooks: Sequence[object] = (),
        durations: Mapping[str, float] | None = None,
        inputs_valid: bool = False,
        cache: CacheMode | None = None,
        cache_default: CacheMode | None = None,
    ) -> RunResult:
        """Run ``program`` once on ``inputs``.

        Args:
            program: the program.
            inputs: values for the program signature's inputs.
            strategy: overrides the program's strategy for this run.
            run_id: an id for hooks and records (default: a new UUID).
            hooks: extra hooks for this run only (after the engine's).
            durations: recorded module durations (ms) to prioritise the longest remaining work.
            inputs_valid: ``inputs`` already went through ``program.signature.validate_inputs``
                (a batch validates every item up front), so they are not validated again.
            cache: the response cache mode of this run, over every module's and backend's own
                (``None``: theirs; see :mod:`dspex.resilience.cache`). Needs an engine built
                with a ``cache``.
            cache_default: the mode of modules whose run, spec and backend name none (``None``:
                the cache's own default, ``[cache] mode``).

        Returns:
            The :class:`RunResult`: ``completed`` with validated outputs, or ``failed`` with
            the error (module failures, an aborted run or outputs that fail validation).

        Raises:
            SecurityError, GraphError, GraphCycleError: the program cannot run here
                (see :meth:`check`); nothing ran.
            ValidationError: ``inputs`` do not match the program signature; nothing ran.
            asyncio.CancelledError: the run was cancelled from outside; running modules were
                cancelled and ``after_run`` saw a ``cancelled`` result.
        """
        chosen = self._strategy(program, strategy)
        known, graph = self._check_once(program, chosen)
        valid_inputs = inputs if inputs_valid else program.signature.validate_inputs(dict(inputs))
        if not known.prepared:
            await self._kinds.prepare(program)
            known.prepared = True
        layout = known.layout
        run_id = run_id or uuid.uuid4().hex
        if hooks:
            dispatch = HookDispatcher((*self.hooks, *hooks))
            before_run, before_step, after_step, after_run = _implemented(dispatch)
        else:
            dispatch = self._dispatch
            before_run, before_step, after_step, after_run = self._implemented
        runner = Runner(
            program=program,
            graph=graph,
            layout=layout,
            plan=layout.plan if durations is None else program.plan(durations),
            strategy=chosen,
            kinds=self._kinds,
            executor=self.executor,
            resources=self.resources,
            hooks=dispatch,
            before_step=before_step,
            after_step=after_step,
            run_id=run_id,
            inputs=valid_inputs,
            default_retry=self.default_retry,
            default_timeout=self.default_timeout,
            cache=self.cache,
            cache_run=cache,
            cache_default=cache_default,
            capture=self.capture,
        )
        if before_run:
            await dispatch.call(
                "before_run", run_id=run_id, program=program, inputs=valid_inputs, strategy=chosen
            )
        try:
            await runner.run()
        except asyncio.CancelledError:
            result = self._result(program, runner, chosen, cancelled=True)
            await dispatch.call("after_run", run_id=run_id, result=result)
            raise
        result = self._result(program, runner, chosen, cancelled=False)
        if after_run:
            await dispatch.call("after_run", run_id=run_id, result=result)
        return result

    def _result(
        self, program: Program, runner: Runner, strategy: str, *, cancelled: bool
    ) -> RunResult:
        duration_ms = runner.elapsed_ms()
        steps = runner.result_steps()
        # one step: its usage is the run's
        usage = steps[0].usage if len(steps) == 1 else _total_usage(steps)
        first_failure = (
            next((s for s in steps if s.status is StepStatus.FAILED), None)
            if runner.scheduler.failures
            else None
        )
        module_error = (
            RunError(
                first_failure.error_code or "internal_error",
                first_failure.error_message or "",
                first_failure.name,
                runner.retryable(first_failure.name),
            )
            if first_failure is not None
            else None
        )
        status = ExecutionStatus.COMPLETED
        outputs: dict[str, Any] = {}
        error: RunError | None = None
        if cancelled:
            status = ExecutionStatus.CANCELLED
            error = RunError("cancelled", "the run was cancelled")
        elif runner.scheduler.aborted:
            status, error = ExecutionStatus.FAILED, module_error
        else:
            raw, checked = runner.program_outputs()
            try:
                outputs = raw if checked else program.signature.validate_outputs(raw)
            except ValidationError as exc:
                status = ExecutionStatus.FAILED
                error = module_error or RunError(error_code(exc), str(exc))
        return RunResult(
            run_id=runner.run_id,
            program=program.name,
            status=status,
            outputs=outputs,
            steps=steps,
            usage=usage,
            duration_ms=duration_ms,
            error=error,
            strategy=strategy,
        )

    # ------------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Release the engine's threads and caches (backends belong to the caller)."""
        self._kinds.close()
        self._threads.close()
        self._known.clear()  # what was prepared is gone with the caches

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _implemented(dispatch: HookDispatcher) -> tuple[bool, bool, bool, bool]:
    """Whether any hook implements ``before_run``, ``before_step``, ``after_step``,
    ``after_run`` (hooks are fixed for a run: asked once, not per module)."""
    return (
        dispatch.has("before_run"),
        dispatch.has("before_step"),
        dispatch.has("after_step"),
        dispatch.has("after_run"),
    )


def _total_usage(steps: Sequence[StepResult]) -> dict[str, Usage]:
    """Usage by model over all steps; sums plain ints so a large run makes one Usage per model."""
    totals: dict[str, list[int]] = {}
    for step in steps:
        for model, used in step.usage.items():
            total = totals.get(model)
            if total is None:
                totals[model] = [used.prompt_tokens, used.completion_tokens]
            else:
                total[0] += used.prompt_tokens
                total[1] += used.completion_tokens
    return {model: Usage(prompt, completion) for model, (prompt, completion) in totals.items()}

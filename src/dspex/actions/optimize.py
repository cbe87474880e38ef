"""Optimize: run one of DSPy's optimizers over a stored program version, record it, keep the result.

The program is presented to the optimizer as a ``dspy.Module``
(:mod:`dspex.engine.dspy_program`): a graph program as a module whose named predictors are its
``predict``/``chain_of_thought`` modules and whose ``forward`` runs the graph on an engine over
the runtime's own backends, so every LM call the optimizer makes through the program goes
through the backend chain (retries, breakers, usage); a one-module ``kind: dspy`` program as its
own loaded instance, run on its backend's LM (a coordinator group's routed LM). The optimizers,
through DSPy's public API:

- ``bootstrap_few_shot``: ``dspy.BootstrapFewShot`` (``max_demos`` bootstrapped and labelled);
- ``bootstrap_random_search``: ``dspy.BootstrapFewShotWithRandomSearch``
  (``[optimize] num_candidates``);
- ``mipro_v2``: ``dspy.MIPROv2`` (its prompt model is ``[optimize] prompt_backend``'s LM; budget
  ``auto``, else ``num_candidates``/``num_trials``);
- ``gepa``: ``dspy.GEPA`` (its reflection LM is ``[optimize] reflection_backend``'s LM; budget
  ``auto``, else ``max_metric_calls``).

One run: check everything that can be checked before any LM call (optimizer, metric, data sets,
backends, budget) → record the run (``running``) → score the starting version on the validation
set (the training set when none is given) → compile, in a worker thread (the optimizer is sync
DSPy code; program runs are handed back to the event loop) → score the result → store it as a new
version in ``draft`` whose spec carries the demos, instructions or module state, and its lineage
under ``metadata["dspex.lineage"]`` → record the trials, scores and what the run cost
(``completed``). A failure is recorded (``failed``, with the error) in its own transaction and
raised.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from dspex.actions._optimizers import (
    OPTIMIZERS,
    OptimizerName,
    OptimizerPlan,
    backend_lm,
    find_backend,
)
from dspex.actions._optimizers import plan as make_plan
from dspex.actions._optimizers import trials as optimizer_trials
from dspex.actions.programs import ProgramCache, default_version, spec_hash
from dspex.backends.base import Usage
from dspex.backends.dspy_lm import has_lm, recording
from dspex.batch.inputs import open_source
from dspex.engine.dspy_program import (
    LM_KINDS,
    PredictorBackend,
    in_program_call,
    is_dspy_program,
    load_dspy_module,
    optimized_spec,
    program_module,
)
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.errors import (
    DspexError,
    ErrorDetail,
    OptimizationError,
    ValidationError,
)
from dspex.metrics import (
    Metric,
    make_example,
    metric_label_fields,
    resolve_metric,
    score_value,
)
from dspex.records import OptimizationRecord, OptimizationStatus, OptimizationTrial
from dspex.resilience.cache import CachingBackend
from dspex.store.optimizations import NewOptimization

if TYPE_CHECKING:
    from dspex._strategies import CacheMode
    from dspex.backends.base import Backend
    from dspex.config import Settings
    from dspex.engine.results import RunResult
    from dspex.resilience.cache import ResponseCache
    from dspex.store.base import Store

__all__ = [
    "DEFAULT_MAX_DEMOS",
    "LINEAGE_KEY",
    "OPTIMIZERS",
    "OptimizationInfo",
    "OptimizeContext",
    "OptimizerName",
    "TrialInfo",
    "dataset_hash",
    "get_optimization",
    "list_optimizations",
    "optimization_info",
    "optimize",
]

DEFAULT_MAX_DEMOS = 4
LINEAGE_KEY = "dspex.lineage"
"""The ``metadata`` key of an optimized version's spec that holds its lineage."""

DataSet = str | Path | Sequence[Mapping[str, Any]]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrialInfo(_Model):
    """One candidate the optimizer scored (0 is the starting version)."""

    number: int
    score: float | None
    detail: dict[str, Any]


class OptimizationInfo(_Model):
    """An optimization run: what it started from, what it made, its scores and trials.

    Attributes:
        optimization_id: the run's id.
        program: the program name.
        parent_version: the version optimized.
        version: the new version (``draft``) holding the result, once the run completed.
        optimizer: the optimizer's name.
        settings: the optimizer's settings as used.
        metric: the metric's name.
        trainset_hash: sha256 of the training set; ``trainset_size`` its examples.
        valset_hash: sha256 of the validation set (``None``: the training set was used).
        seed: the seed given to the optimizer.
        status: ``running``, ``completed`` or ``failed``.
        baseline_score: the parent version's mean metric on the validation set.
        score: the new version's mean metric on the validation set.
        stats: what the run cost: ``program_calls``, ``failed_calls``, ``lm_calls`` (calls that
            reached a backend), ``cache_hits`` (program LM calls the response cache answered),
            ``usage``.
        error: why it failed.
        trials: the candidates scored (``get_optimization`` and ``optimize`` fill them).
    """

    optimization_id: str
    program: str
    parent_version: int
    version: int | None
    optimizer: str
    settings: dict[str, Any]
    metric: str
    trainset_hash: str
    trainset_size: int
    valset_hash: str | None
    valset_size: int
    seed: int | None
    status: OptimizationStatus
    baseline_score: float | None
    score: float | None
    stats: dict[str, Any]
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    trials: list[TrialInfo] = []


def optimization_info(record: OptimizationRecord) -> OptimizationInfo:
    """The public view of a recorded run."""
    return OptimizationInfo(
        optimization_id=record.id,
        program=record.program,
        parent_version=record.program_version,
        version=record.result_version,
        optimizer=record.optimizer,
        settings=record.settings,
        metric=record.metric,
        trainset_hash=record.trainset_hash,
        trainset_size=record.trainset_size,
        valset_hash=record.valset_hash,
        valset_size=record.valset_size,
        seed=record.seed,
        status=record.status,
        baseline_score=record.baseline_score,
        score=record.score,
        stats=record.stats,
        error=record.error,
        created_at=record.created_at,
        finished_at=record.finished_at,
        trials=[TrialInfo(number=t.number, score=t.score, detail=t.detail) for t in record.trials],
    )


@dataclass(frozen=True, slots=True)
class OptimizeContext:
    """What an optimization run needs from the runtime."""

    store: Store
    settings: Settings
    backends: Mapping[str, Backend]
    programs: ProgramCache
    cache: ResponseCache | None = None
    cache_mode: CacheMode | None = None


async def get_optimization(store: Store, optimization_id: str) -> OptimizationInfo:
    """One recorded run with its trials.

    Raises:
        NotFoundError: no such run.
    """
    return optimization_info(await store.get_optimization(optimization_id))


async def list_optimizations(
    store: Store, *, program: str | None = None, limit: int = 50
) -> list[OptimizationInfo]:
    """Recorded runs, newest first."""
    return [
        optimization_info(r) for r in await store.list_optimizations(program=program, limit=limit)
    ]


# ------------------------------------------------------------------------------ data sets


def dataset_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of a data set's canonical JSON lines (keys sorted): the same examples in the same
    order hash the same wherever they came from."""
    digest = hashlib.sha256()
    for row in rows:
        line = json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _read_rows(data: DataSet, what: str) -> list[dict[str, Any]]:
    """The examples of a JSONL file (or a list), every bad line named at once."""
    source = open_source(data if isinstance(data, str | Path) else list(data))
    rows: list[dict[str, Any]] = []
    problems: list[ErrorDetail] = []
    with source:
        for raw in source:
            where = f"{what}[{raw.index}]"
            if raw.problem is not None:
                line = f"line {raw.line}: " if raw.line is not None else ""
                problems.append(ErrorDetail(where, "invalid_example", line + raw.problem))
            else:
                rows.append(dict(raw.value))
    if problems:
        raise ValidationError(f"the {what} has invalid examples:", problems)
    if not rows:
        raise ValidationError(
            f"the {what} is empty:", [ErrorDetail(what, "empty", "give at least one example")]
        )
    return rows


def _examples(rows: Sequence[Mapping[str, Any]], program: Program, what: str) -> list[Any]:
    """``dspy.Example`` objects whose inputs are the program's inputs and whose labels are the
    rest; an example without a required input or without any label is refused."""
    signature = program.signature
    names = [f.name for f in signature.input_fields]
    required = [f.name for f in signature.input_fields if not f.optional]
    problems: list[ErrorDetail] = []
    examples: list[Any] = []
    for index, row in enumerate(rows):
        where = f"{what}[{index}]"
        missing = [name for name in required if name not in row]
        if missing:
            problems.append(
                ErrorDetail(where, "missing_input", f"no value for the input(s) {missing}")
            )
            continue
        present = [name for name in names if name in row]
        example = make_example(row, present)
        try:
            metric_label_fields(example)
        except DspexError as exc:
            problems.append(ErrorDetail(where, "no_label", exc.message))
            continue
        examples.append(example)
    if problems:
        raise ValidationError(f"the {what} does not fit program {program.name!r}:", problems)
    return examples


# ------------------------------------------------------------------------------ recording


@dataclass
class _Counter:
    """What a run cost: program runs, LM calls and usage (from runs, or from DSPy's callbacks
    for a ``dspy`` module, which makes its own LM calls)."""

    program_calls: int = 0
    failed_calls: int = 0
    lm_calls: int = 0
    failed_lm_calls: int = 0
    cache_hits: int = 0
    usage: dict[str, Usage] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_run(self, result: RunResult) -> None:
        with self.lock:
            self.program_calls += 1
            self.failed_calls += int(result.status.value != "completed")
            for step in result.steps:
                if step.kind in LM_KINDS:
                    self.lm_calls += step.attempts
                    self.failed_lm_calls += step.attempts - int(step.status.value == "completed")
            self._add(result.usage)

    def on_lm(self, failed: bool, usage: Mapping[str, Usage]) -> None:
        with self.lock:
            self.lm_calls += 1
            self.failed_lm_calls += int(failed)
            self._add(usage)

    def on_hit(self) -> None:
        """A program's LM call answered by the response cache: counted by its run as an
        attempt, it reached no backend."""
        with self.lock:
            self.cache_hits += 1

    def _add(self, usage: Mapping[str, Usage]) -> None:
        for model, counts in usage.items():
            self.usage[model] = self.usage.get(model, Usage()) + counts

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "program_calls": self.program_calls,
                "failed_calls": self.failed_calls,
                "lm_calls": self.lm_calls - self.cache_hits,
                "failed_lm_calls": self.failed_lm_calls,
                "cache_hits": self.cache_hits,
                "usage": {m: u.to_dict() for m, u in sorted(self.usage.items())},
            }


def _lm_callback(counter: _Counter) -> Any:
    """A DSPy callback counting each LM call made outside a graph program's LM modules: a
    ``dspy`` module's own, and the optimizer's (MIPROv2's prompt model, GEPA's reflection LM)."""
    from dspy.utils.callback import BaseCallback

    class _LMCalls(BaseCallback):  # type: ignore[misc]  # dspy is untyped
        def on_lm_end(
            self, call_id: str, outputs: Any, exception: BaseException | None = None
        ) -> None:
            if not in_program_call():  # a program's LM call is counted by its run
                counter.on_lm(exception is not None, {})

    return _LMCalls()


# ------------------------------------------------------------------------------ the action


def _cached(
    ctx: OptimizeContext, program: Program, backend: Backend, on_hit: Callable[[], None]
) -> Backend:
    """``backend`` behind the response cache (``read_write`` unless the run, the module or its
    backend says otherwise), under the program's predictors so that each key holds the demos
    and instructions the call was sent with."""
    cache = ctx.cache
    if cache is None:
        return backend

    def mode_of(module: str) -> CacheMode:
        spec = program.modules.get(module)
        if spec is None:  # not one of the program's modules: the run's or default mode
            return cache.mode_for(backend.name, None, ctx.cache_mode, "read_write")
        return cache.mode_for(spec.backend_name, spec.cache, ctx.cache_mode, "read_write")

    return CachingBackend(backend, cache, program=program.name, mode_of=mode_of, on_hit=on_hit)


def _mean_score(module: Any, examples: list[Any], metric: Metric, threads: int) -> float:
    """The mean metric of ``module`` over ``examples`` (a failed run scores 0), with
    ``dspy.Evaluate`` (blocking: in the optimizer's thread)."""
    import dspy

    evaluate = dspy.Evaluate(
        devset=examples,
        metric=metric,
        num_threads=threads,
        display_progress=False,
        max_errors=len(examples) + 1,
        failure_score=0.0,
        provide_traceback=False,
    )
    result = evaluate(module)
    scores = [score_value(score) for _, _, score in result.results]
    mean = sum(scores) / len(examples)
    return mean if math.isfinite(mean) else 0.0


async def optimize(
    ctx: OptimizeContext,
    name: str,
    trainset: DataSet,
    *,
    metric: str,
    optimizer: str = "bootstrap_few_shot",
    version: int | None = None,
    valset: DataSet | None = None,
    seed: int | None = None,
    max_demos: int = DEFAULT_MAX_DEMOS,
) -> OptimizationInfo:
    """Optimize a program version with a DSPy optimizer; the result is a new ``draft`` version.

    Raises:
        ValidationError: unknown optimizer, bad ``max_demos``, or data sets that do not fit the
            program (every bad example named); nothing recorded.
        MetricError, SecurityError: the metric cannot be used; nothing recorded.
        ConfigError: a backend the optimizer needs is missing or has no LM, or no budget;
            nothing recorded.
        NotFoundError: no such program (version).
        DspexError: the optimizer failed; the run is recorded ``failed`` with the error.
    """
    if optimizer not in OPTIMIZERS:
        message = f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}"
        raise ValidationError(message, [ErrorDetail("optimizer", "unknown_optimizer", message)])
    if max_demos < 0:
        message = f"max_demos must be 0 or more, got {max_demos}"
        raise ValidationError(message, [ErrorDetail("max_demos", "out_of_range", message)])
    settings = ctx.settings
    metric_fn = resolve_metric(metric, allowed_imports=settings.allowed_imports)
    train_rows = _read_rows(trainset, "trainset")
    val_rows = _read_rows(valset, "valset") if valset is not None else None
    version = await default_version(ctx.store, name, version)
    record = await ctx.store.get_program(name, version)
    program = ctx.programs.get(record)
    train = _examples(train_rows, program, "trainset")
    val = _examples(val_rows, program, "valset") if val_rows is not None else None
    plan = make_plan(
        optimizer,
        metric_fn,
        max_demos=max_demos,
        seed=seed,
        settings=settings,
        backends=ctx.backends,
    )
    dspy_kind = is_dspy_program(program)
    student_lm = None
    if dspy_kind:
        (spec,) = program.modules.values()
        if spec.backend is not None:
            backend = find_backend(ctx.backends, spec.backend_name, f"module {spec.module}")
            student_lm = backend_lm(backend, f"module {spec.module}")
    run = await ctx.store.create_optimization(
        NewOptimization(
            program=record.name,
            program_version=record.version,
            optimizer=optimizer,
            metric=metric,
            trainset_hash=dataset_hash(train_rows),
            trainset_size=len(train_rows),
            valset_hash=dataset_hash(val_rows) if val_rows is not None else None,
            valset_size=len(val_rows) if val_rows is not None else len(train_rows),
            seed=seed,
            settings=plan.settings,
        )
    )
    counter = _Counter()
    try:
        outcome = await _run(ctx, program, plan, train, val, metric_fn, counter, student_lm)
        baseline, score, compiled, trials = outcome
        lineage = {
            "optimization_id": run.id,
            "parent_version": record.version,
            "optimizer": optimizer,
            "settings": plan.settings,
            "metric": metric,
            "trainset_hash": run.trainset_hash,
            "valset_hash": run.valset_hash,
            "seed": seed,
            "baseline_score": baseline,
            "score": score,
        }
        spec_data = optimized_spec(program, compiled, metadata={LINEAGE_KEY: lineage})
        Program.from_dict(spec_data)  # the new version must load as a program
        stored = await ctx.store.put_program(record.name, spec_data, spec_hash(spec_data))
        numbered = [
            OptimizationTrial(0, baseline, {"kind": "baseline", "version": record.version}),
            *(OptimizationTrial(i, t.score, t.detail) for i, t in enumerate(trials, start=1)),
            OptimizationTrial(len(trials) + 1, score, {"kind": "result"}),
        ]
        await ctx.store.add_optimization_trials(run.id, numbered)
        await ctx.store.finish_optimization(
            run.id,
            status=OptimizationStatus.COMPLETED,
            baseline_score=baseline,
            score=score,
            result_version=stored.version,
            stats=counter.stats(),
        )
    except Exception as exc:
        await _record_failure(ctx.store, run.id, counter, exc)
        if isinstance(exc, DspexError):
            raise
        raise OptimizationError(f"{optimizer} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:  # cancelled: recorded as failed, and the cancellation goes on
        await asyncio.shield(_record_failure(ctx.store, run.id, counter, exc))
        raise
    return optimization_info(await ctx.store.get_optimization(run.id))


async def _record_failure(
    store: Store, optimization_id: str, counter: _Counter, exc: BaseException
) -> None:
    code = exc.code if isinstance(exc, DspexError) else type(exc).__name__
    await store.finish_optimization(
        optimization_id,
        status=OptimizationStatus.FAILED,
        stats=counter.stats(),
        error=f"{code}: {exc}",
    )


async def _run(
    ctx: OptimizeContext,
    program: Program,
    plan: OptimizerPlan,
    train: list[Any],
    val: list[Any] | None,
    metric: Metric,
    counter: _Counter,
    student_lm: Any,
) -> tuple[float, float, Any, list[OptimizationTrial]]:
    """Score the start, compile and score the result, in a worker thread."""
    import dspy

    settings = ctx.settings
    threads = settings.optimize.num_threads
    scored = val if val is not None else train
    default = ctx.backends.get(settings.default_backend) or ctx.backends.get("default")
    default_lm = default.lm if default is not None and has_lm(default) else None  # type: ignore[attr-defined]
    if is_dspy_program(program):
        student = await asyncio.to_thread(
            load_dspy_module, program, allowed_imports=settings.allowed_imports
        )
        engine = None
        context: dict[str, Any] = {"callbacks": [_lm_callback(counter)]}
        if student_lm is not None:
            context["lm"] = student_lm
        elif default_lm is not None:
            context["lm"] = default_lm
    else:
        engine = Engine(
            {
                name: PredictorBackend(_cached(ctx, program, b, counter.on_hit))
                for name, b in ctx.backends.items()
            },
            resources=settings.resources,
            allowed_imports=settings.allowed_imports,
            corpus_dirs=settings.corpus_dirs,
            allow_pickle=settings.allow_pickle,
        )
        student = program_module(program, engine, on_run=counter.on_run)
        context = {"callbacks": [_lm_callback(counter)]}
        if default_lm is not None:
            context["lm"] = default_lm

    def work() -> tuple[float, float, Any, list[OptimizationTrial]]:
        with dspy.context(**context):
            baseline = _mean_score(student, scored, metric, threads)
            compiled = plan.compile(plan.build(), student, train, val)
            score = _mean_score(compiled, scored, metric, threads)
        return baseline, score, compiled, optimizer_trials(plan.name, compiled)

    try:
        with recording(program.name):  # a dspy module's routed LM calls, from worker threads
            return await asyncio.to_thread(work)
    finally:
        if engine is not None:
            await engine.aclose()

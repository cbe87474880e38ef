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
raised; a cancellation is recorded ``interrupted``.

Runs are resumable. The run is held under a lease (``worker_id``, ``lease_seconds``) that a
heartbeat renews while it runs, so a run whose process died is told apart from one still running
(shown ``interrupted`` once its lease expired). Its record keeps what it was asked (data sets,
``max_demos``, the ``[optimize]`` settings), and trials are recorded as they are scored: the
baseline first, then each ``bootstrap_random_search`` candidate (DSPy's optimizer compiling one
seed at a time, the candidate's spec kept with its trial). ``optimize(resume=ID)`` claims a
``failed``, ``interrupted`` or orphaned run and goes on with what it was started with: the
recorded baseline and candidates are reused, not run again, so the result is the one an
uninterrupted run makes; ``bootstrap_few_shot``, ``mipro_v2`` and ``gepa`` compile again from the
start with the same seed (their inner steps are not checkpointed). A version written just before
a process died, before the run was marked completed, is written again by the resumed run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from dspex.actions._heartbeat import Heartbeat
from dspex.actions._optimize_job import (
    DataSet,
    Job,
    check_resumable,
    dataset_hash,
    lost,
    no_settings_with_resume,
    prepare,
    read_rows,
    resumed,
)
from dspex.actions._optimize_progress import (
    CANDIDATE,
    Counter,
    OptimizationCallback,
    OptimizationEvent,
    Progress,
    TrialInfo,
    lm_callback,
    merged_stats,
    trial_info,
)
from dspex.actions._optimizers import (
    FIRST_SEED,
    OPTIMIZERS,
    OptimizerName,
    random_search,
)
from dspex.actions._optimizers import trials as optimizer_trials
from dspex.actions.programs import ProgramCache, spec_hash
from dspex.backends.dspy_lm import has_lm, recording
from dspex.engine.dspy_program import (
    PredictorBackend,
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
    LeaseLostError,
    OptimizationError,
    ValidationError,
)
from dspex.metrics import (
    Metric,
    score_value,
)
from dspex.records import (
    OptimizationRecord,
    OptimizationStatus,
    OptimizationTrial,
)
from dspex.store.optimizations import NewOptimization

if TYPE_CHECKING:
    from dspex.backends.base import Backend
    from dspex.config import Settings
    from dspex.store.base import Store

log = logging.getLogger("dspex.optimize")

__all__ = [
    "DEFAULT_MAX_DEMOS",
    "LINEAGE_KEY",
    "OPTIMIZERS",
    "OptimizationCallback",
    "OptimizationEvent",
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


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
        stats: what the run cost: ``program_calls``, ``failed_calls``, ``lm_calls``, ``usage``.
        error: why it failed (or was interrupted).
        trials: the candidates scored (``get_optimization`` and ``optimize`` fill them).
        worker_id: the process that runs (or last ran) it.
        lease_expires_at: while ``running``, when its lease ends unless renewed.
        attempts: how many times it was started (1, plus one per resume).
        resumable: whether ``optimize(resume=ID)`` can take it up: ``failed``,
            ``interrupted`` (cancelled, or its process stopped renewing its lease: a run whose
            process died is shown ``interrupted``, not ``running``).
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
    worker_id: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 1
    resumable: bool = False


def optimization_info(record: OptimizationRecord, now: datetime | None = None) -> OptimizationInfo:
    """The public view of a recorded run; a ``running`` run whose lease expired before ``now``
    (default: the current time) lost its process and is shown ``interrupted``."""
    status, error = record.status, record.error
    if lost(record, now or datetime.now(UTC)):
        status = OptimizationStatus.INTERRUPTED
        error = (
            f"lease_expired: {record.worker_id or 'its process'} stopped renewing its lease"
            f" at {record.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC"
        )
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
        status=status,
        baseline_score=record.baseline_score,
        score=record.score,
        stats=record.stats,
        error=error,
        created_at=record.created_at,
        finished_at=record.finished_at,
        trials=[trial_info(t) for t in record.trials],
        worker_id=record.worker_id,
        lease_expires_at=record.lease_expires_at if status.value == "running" else None,
        attempts=record.attempts,
        resumable=status.is_resumable,
    )


@dataclass(frozen=True, slots=True)
class OptimizeContext:
    """What an optimization run needs from the runtime."""

    store: Store
    settings: Settings
    backends: Mapping[str, Backend]
    programs: ProgramCache
    worker_id: str = "local"
    lease_seconds: float = 30.0

    def store_now(self) -> datetime:
        """The store's clock (what leases are measured against)."""
        return self.store.clock()


async def get_optimization(store: Store, optimization_id: str) -> OptimizationInfo:
    """One recorded run with its trials.

    Raises:
        NotFoundError: no such run.
    """
    return optimization_info(await store.get_optimization(optimization_id), store.clock())


async def list_optimizations(
    store: Store, *, program: str | None = None, limit: int = 50
) -> list[OptimizationInfo]:
    """Recorded runs, newest first."""
    now = store.clock()
    return [
        optimization_info(r, now)
        for r in await store.list_optimizations(program=program, limit=limit)
    ]


# ------------------------------------------------------------------------------ the action


async def optimize(
    ctx: OptimizeContext,
    name: str | None,
    trainset: DataSet | None,
    *,
    metric: str | None = None,
    optimizer: str | None = None,
    version: int | None = None,
    valset: DataSet | None = None,
    seed: int | None = None,
    max_demos: int | None = None,
    resume: str | None = None,
    on_progress: OptimizationCallback | None = None,
    on_start: Callable[[str], None] | None = None,
) -> OptimizationInfo:
    """Optimize a program version with a DSPy optimizer; the result is a new ``draft`` version.

    With ``resume``, the run of that id goes on (a ``failed`` or ``interrupted`` run, or a
    ``running`` one whose process died): with the data sets, optimizer settings, metric and seed
    it was started with (give none of them again); what it recorded is reused, not scored again:
    the baseline, and each ``bootstrap_random_search`` candidate. The other optimizers compile
    again from the start with the same seed.

    Raises:
        ValidationError: unknown optimizer, bad ``max_demos``, data sets that do not fit the
            program (every bad example named), or settings given with ``resume``; nothing
            recorded.
        MetricError, SecurityError: the metric cannot be used; nothing recorded.
        ConfigError: a backend the optimizer needs is missing or has no LM, or no budget;
            nothing recorded.
        NotFoundError: no such program (version), or no such run to resume.
        OptimizationError: the run to resume completed or still runs; or the optimizer failed
            (the run is recorded ``failed`` with the error; ``interrupted`` when cancelled).
    """
    if resume is not None:
        no_settings_with_resume(
            trainset=trainset,
            valset=valset,
            metric=metric,
            optimizer=optimizer,
            version=version,
            seed=seed,
            max_demos=max_demos,
        )
        job = await resumed(ctx, resume, name)
        run = await ctx.store.claim_optimization(
            resume, worker_id=ctx.worker_id, lease_seconds=ctx.lease_seconds
        )
        if run is None:  # claimed by another process meanwhile
            check_resumable(await ctx.store.get_optimization(resume), ctx.store_now())
            raise OptimizationError(
                f"optimization {resume} cannot be resumed now"
            )  # pragma: no cover
        done = {t.number: t for t in (await ctx.store.get_optimization(resume)).trials}
    else:
        if name is None or trainset is None or metric is None:
            message = "give the program, the trainset and the metric (or resume a run by its id)"
            raise ValidationError(message, [ErrorDetail("resume", "missing", message)])
        train_rows = read_rows(trainset, "trainset")
        val_rows = read_rows(valset, "valset") if valset is not None else None
        job = await prepare(
            ctx,
            name,
            train_rows,
            val_rows,
            metric=metric,
            optimizer=optimizer or "bootstrap_few_shot",
            version=version,
            seed=seed,
            max_demos=DEFAULT_MAX_DEMOS if max_demos is None else max_demos,
            settings=ctx.settings,
        )
        run = await ctx.store.create_optimization(
            NewOptimization(
                program=job.record.name,
                program_version=job.record.version,
                optimizer=job.plan.name,
                metric=job.metric,
                trainset_hash=dataset_hash(job.train_rows),
                trainset_size=len(job.train_rows),
                valset_hash=dataset_hash(job.val_rows) if job.val_rows is not None else None,
                valset_size=len(job.val_rows or job.train_rows),
                seed=job.seed,
                settings=job.plan.settings,
                worker_id=ctx.worker_id,
                lease_seconds=ctx.lease_seconds,
                request=job.request,
            )
        )
        done = {}
    return await _drive(ctx, job, run, done, on_progress, on_start)


async def _drive(
    ctx: OptimizeContext,
    job: Job,
    run: OptimizationRecord,
    done: dict[int, OptimizationTrial],
    on_progress: OptimizationCallback | None,
    on_start: Callable[[str], None] | None,
) -> OptimizationInfo:
    """Run a recorded (or claimed) run under its lease and record its outcome."""
    store, token, lease = ctx.store, run.lease_token, ctx.lease_seconds
    assert token is not None
    counter = Counter()
    progress = Progress(run.id, counter, on_progress, asyncio.get_running_loop())
    if on_start is not None:
        on_start(run.id)
    progress.emit("started")
    heartbeat = Heartbeat(
        lambda: _beat(store, run.id, token, lease), lease, f"optimization {run.id}"
    )
    try:
        try:
            outcome = await _run(ctx, job, run.id, done, counter, progress)
        finally:
            await heartbeat.stop()
        baseline, score, compiled, trials = outcome
        lineage = {
            "optimization_id": run.id,
            "parent_version": job.record.version,
            "optimizer": job.plan.name,
            "settings": job.plan.settings,
            "metric": job.metric,
            "trainset_hash": run.trainset_hash,
            "valset_hash": run.valset_hash,
            "seed": job.seed,
            "baseline_score": baseline,
            "score": score,
        }
        spec_data = optimized_spec(job.program, compiled, metadata={LINEAGE_KEY: lineage})
        Program.from_dict(spec_data)  # the new version must load as a program
        stored = await store.put_program(job.record.name, spec_data, spec_hash(spec_data))
        recorded = (await store.get_optimization(run.id)).trials
        last = max((t.number for t in recorded), default=0)
        numbered = [
            *(OptimizationTrial(last + i, t.score, t.detail) for i, t in enumerate(trials, 1)),
            OptimizationTrial(last + len(trials) + 1, score, {"kind": "result"}),
        ]
        await store.add_optimization_trials(run.id, numbered)
        progress.emit("result", numbered[-1])
        await store.finish_optimization(
            run.id,
            status=OptimizationStatus.COMPLETED,
            baseline_score=baseline,
            score=score,
            result_version=stored.version,
            stats=merged_stats(run.stats, counter.stats()),
            lease_token=token,
        )
    except Exception as exc:
        await _record_end(store, run, counter, exc, OptimizationStatus.FAILED)
        if isinstance(exc, DspexError):
            raise
        raise OptimizationError(f"{job.plan.name} failed: {type(exc).__name__}: {exc}") from exc
    except BaseException as exc:  # cancelled: interrupted (resumable), the cancellation goes on
        await asyncio.shield(_record_end(store, run, counter, exc, OptimizationStatus.INTERRUPTED))
        raise
    return optimization_info(await store.get_optimization(run.id), ctx.store_now())


async def _beat(store: Store, optimization_id: str, token: str, lease: float) -> None:
    if not await store.heartbeat_optimization(optimization_id, token, lease):
        raise LeaseLostError(f"optimization {optimization_id} is no longer held by this lease")


async def _record_end(
    store: Store,
    run: OptimizationRecord,
    counter: Counter,
    exc: BaseException,
    status: OptimizationStatus,
) -> None:
    """Record why a run ended without a result (never masking that reason)."""
    code = exc.code if isinstance(exc, DspexError) else type(exc).__name__
    try:
        await store.finish_optimization(
            run.id,
            status=status,
            stats=merged_stats(run.stats, counter.stats()),
            error=f"{code}: {exc}" if str(exc) else code,
            lease_token=run.lease_token,
        )
    except DspexError as failure:
        log.warning("could not record the end of optimization %s: %s", run.id, failure)


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


async def _run(
    ctx: OptimizeContext,
    job: Job,
    optimization_id: str,
    done: Mapping[int, OptimizationTrial],
    counter: Counter,
    progress: Progress,
) -> tuple[float, float, Any, list[OptimizationTrial]]:
    """Score the start, compile and score the result, in a worker thread; what an earlier
    attempt recorded (``done``, trials by number) is reused."""
    import dspy

    settings = job.settings
    program, plan, metric = job.program, job.plan, job.metric_fn
    threads = settings.optimize.num_threads
    scored = job.val if job.val is not None else job.train
    loop = asyncio.get_running_loop()
    default = ctx.backends.get(settings.default_backend) or ctx.backends.get("default")
    default_lm = default.lm if default is not None and has_lm(default) else None  # type: ignore[attr-defined]
    engine: Engine | None = None
    if is_dspy_program(program):
        student = await asyncio.to_thread(
            load_dspy_module, program, allowed_imports=settings.allowed_imports
        )
        context: dict[str, Any] = {"callbacks": [lm_callback(counter)]}
        if job.student_lm is not None:
            context["lm"] = job.student_lm
        elif default_lm is not None:
            context["lm"] = default_lm
    else:
        engine = Engine(
            {name: PredictorBackend(b) for name, b in ctx.backends.items()},
            resources=settings.resources,
            allowed_imports=settings.allowed_imports,
            corpus_dirs=settings.corpus_dirs,
            allow_pickle=settings.allow_pickle,
        )
        student = program_module(program, engine, on_run=counter.on_run)
        context = {"callbacks": [lm_callback(counter)]}
        if default_lm is not None:
            context["lm"] = default_lm

    def record(trial: OptimizationTrial, phase: str) -> None:
        """Record a trial from the optimizer's thread, before going on."""
        progress.check()
        store_call = ctx.store.add_optimization_trials(optimization_id, [trial])
        asyncio.run_coroutine_threadsafe(store_call, loop).result()
        progress.emit(phase, trial)

    def candidate(spec_data: Mapping[str, Any]) -> Any:
        """A recorded candidate as a module again (built from the spec it made)."""
        candidate_program = Program.from_dict(dict(spec_data))
        if engine is None:
            return load_dspy_module(candidate_program, allowed_imports=settings.allowed_imports)
        return program_module(candidate_program, engine, loop=loop, on_run=counter.on_run)

    def on_candidate(seed: int, score: float, subscores: list[float], module: Any) -> None:
        mean = sum(subscores) / len(subscores) if subscores else None
        detail = {
            "kind": "candidate",
            "seed": seed,
            "dspy_score": score,
            CANDIDATE: optimized_spec(program, module),
        }
        record(OptimizationTrial(seed - FIRST_SEED + 1, mean, detail), "candidate")

    def work() -> tuple[float, float, Any, list[OptimizationTrial]]:
        with dspy.context(**context):
            recorded = done.get(0)
            if recorded is not None and recorded.score is not None:
                baseline = recorded.score
            else:
                baseline = _mean_score(student, scored, metric, threads)
                detail = {"kind": "baseline", "version": job.record.version}
                record(OptimizationTrial(0, baseline, detail), "baseline")
            progress.emit("compiling")
            if plan.compile_one is not None:
                earlier = {
                    int(t.detail["seed"]): (
                        float(t.detail["dspy_score"]),
                        candidate(t.detail[CANDIDATE]),
                    )
                    for t in done.values()
                    if t.detail.get("kind") == "candidate" and CANDIDATE in t.detail
                }
                compiled = random_search(
                    plan, student, job.train, job.val, scored=earlier, on_candidate=on_candidate
                )
                found: list[OptimizationTrial] = []
            else:
                compiled = plan.compile(plan.build(), student, job.train, job.val)
                found = optimizer_trials(plan.name, compiled)
            score = _mean_score(compiled, scored, metric, threads)
        return baseline, score, compiled, found

    try:
        with recording(program.name):  # a dspy module's routed LM calls, from worker threads
            call = functools.partial(contextvars.copy_context().run, work)
            thread = loop.run_in_executor(None, call)
            try:
                return await asyncio.shield(thread)
            except asyncio.CancelledError:
                # The thread runs on: stop it at its next program call or trial, wait for it
                # (no trial is recorded after the run's end), then go on cancelling.
                progress.stopped.set()
                await asyncio.gather(thread, return_exceptions=True)
                raise
    finally:
        if engine is not None:
            await engine.aclose()

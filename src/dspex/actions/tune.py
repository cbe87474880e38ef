"""Tune: propose a program's execution settings from its recorded runs (``dspex program tune``).

What history says, module by module and for the whole program:

- **timeout** per attempt: the p95 of the module's recorded durations (of runs that made one
  attempt, when there are enough: a retried run lasted several attempts and their backoff) times
  :data:`MARGIN`,
  rounded up to a tenth of a second (at least :data:`MIN_TIMEOUT` seconds). Runs that hit the
  current timeout are counted in the evidence: their durations stop at the timeout, so a p95
  close to it says the timeout, not the module, set the pace.
- **retry budget** (``max_attempts``): the module's transient failure rate per attempt (failed
  attempts that were retried, plus runs that failed with a retryable error code — rate limits,
  timeouts, connection errors, 5xx) gives the smallest number of attempts that leaves at most
  :data:`EXHAUSTION_TARGET` of calls failing on transient errors alone, capped at
  :data:`MAX_ATTEMPTS`. With no transient failure recorded the current budget stands.
- **strategy**: the program's estimated run time under each strategy with the recorded median
  durations (``sequential``: their sum; ``parallel``: the sum of each level's slowest;
  ``optimized``: the critical path), the shortest proposed; the most frequent recorded critical
  path is the evidence. A ``resource_aware`` program keeps its strategy (its admission is a
  choice about capacity, not speed).
- **resources**: the peak number of LM modules that ran at once in one recorded run is the
  ``lm_slots`` capacity the program can use; it is a ``dspex.toml`` setting, so it is reported,
  not applied.

A module needs :data:`MIN_RUNS` recorded runs before anything is proposed for it. ``apply``
writes the proposal as a new ``draft`` version, its lineage under ``metadata["dspex.lineage"]``.
Percentiles are :func:`dspex._percentile.percentile`; critical paths and recorded history are
:mod:`dspex.engine.history` (whose rule is :mod:`dspex._critical_path`).
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from dspex._percentile import percentile, report_ms
from dspex._strategies import STRATEGIES
from dspex.actions.optimize import LINEAGE_KEY
from dspex.actions.programs import ProgramCache, default_version, spec_hash
from dspex.actions.queries import program_deps
from dspex.engine.dspy_program import LM_KINDS
from dspex.engine.history import step_duration, step_ran, summarize
from dspex.engine.program import Program
from dspex.engine.spec import MODULE_MAX_ATTEMPTS
from dspex.errors import CircuitOpenError, _retryable_code
from dspex.records import StepRecord, StepStatus

if TYPE_CHECKING:
    from dspex.store.base import Store

__all__ = [
    "EXHAUSTION_TARGET",
    "MARGIN",
    "MAX_ATTEMPTS",
    "MIN_RUNS",
    "MIN_TIMEOUT",
    "ModuleTuning",
    "StrategyTuning",
    "TuneProposal",
    "tune",
]

MARGIN = 1.5
"""A proposed timeout is the recorded p95 times this."""
MIN_TIMEOUT = 1.0
"""No proposed timeout is shorter (seconds)."""
EXHAUSTION_TARGET = 0.001
"""The share of calls that may fail on transient errors alone after every attempt."""
MAX_ATTEMPTS = 5
"""No proposed retry budget is larger: past it, retries hide an unhealthy backend."""
MIN_RUNS = 5
"""Recorded runs a module needs before anything is proposed for it."""
_TIMEOUT_CODES = frozenset({"timeout", "deadline_exceeded"})


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModuleTuning(_Model):
    """What history says about one module, and what is proposed for it.

    Attributes:
        module: the module.
        runs: its recorded runs (completed or failed).
        p50_ms: the median recorded duration; ``p95_ms`` the 95th percentile.
        timeouts: runs that ended on a timeout.
        attempts: LM calls made (retries included); ``transient_failures`` those that failed
            with a retryable error; ``transient_rate`` their share.
        timeout: the current per-attempt timeout (seconds); ``proposed_timeout`` the proposal.
        max_attempts: the current retry budget; ``proposed_max_attempts`` the proposal.
        evidence: the proposal in words.
    """

    module: str
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    timeouts: int
    attempts: int
    transient_failures: int
    transient_rate: float | None
    timeout: float | None
    proposed_timeout: float | None
    max_attempts: int
    proposed_max_attempts: int
    evidence: list[str]


class StrategyTuning(_Model):
    """The strategy: current, proposed, and each strategy's estimated run time (ms)."""

    current: str
    proposed: str
    estimated_ms: dict[str, float]
    critical_path: list[str]
    peak_lm_modules: int
    evidence: list[str]


class TuneProposal(_Model):
    """A proposal for a program version's execution settings, with its evidence.

    Attributes:
        program: the program; ``version`` the version the history is of.
        runs: recorded executions analysed.
        modules: per module, the evidence and the proposal.
        strategy: the strategy proposal.
        changes: the spec changes, one line each (empty: nothing to change).
        notes: what history says about settings outside the spec (``dspex.toml``).
        applied_version: the new ``draft`` version written by ``apply``.
    """

    program: str
    version: int
    runs: int
    modules: list[ModuleTuning]
    strategy: StrategyTuning
    changes: list[str]
    notes: list[str]
    applied_version: int | None = None


# ------------------------------------------------------------------------------ evidence


def proposed_timeout(p95_ms: float) -> float:
    """The p95 times :data:`MARGIN`, rounded up to 0.1 s, at least :data:`MIN_TIMEOUT` s."""
    return max(MIN_TIMEOUT, math.ceil(p95_ms * MARGIN / 100.0) / 10.0)


def attempts_for(rate: float) -> int:
    """The fewest attempts after which at most :data:`EXHAUSTION_TARGET` of calls still fail on
    transient errors at ``rate`` per attempt (capped at :data:`MAX_ATTEMPTS`)."""
    if rate <= 0.0:
        return 1
    if rate >= 1.0:
        return MAX_ATTEMPTS
    needed = math.ceil(math.log(EXHAUSTION_TARGET) / math.log(rate))
    return max(1, min(MAX_ATTEMPTS, needed))


def _module_tuning(name: str, program: Program, steps: Sequence[StepRecord]) -> ModuleTuning:
    spec = program.modules[name]
    # a call an open breaker refused never reached the backend: its duration says nothing
    ran = [s for s in steps if step_ran(s) and s.error_code != CircuitOpenError.code]
    # a timeout is per attempt: a run that retried lasted several attempts and their backoff
    single = [step_duration(s) for s in ran if s.attempts <= 1]
    durations = single if len(single) >= MIN_RUNS else [step_duration(s) for s in ran]
    p50, p95 = percentile(durations, 50), percentile(durations, 95)
    timeouts = sum(1 for s in ran if s.error_code in _TIMEOUT_CODES)
    attempts = sum(max(1, s.attempts) for s in ran)
    transient = sum(max(0, s.attempts - 1) for s in ran) + sum(
        1
        for s in ran
        if s.status is StepStatus.FAILED and s.error_code and _retryable_code(s.error_code)
    )
    rate = transient / attempts if attempts else None
    current_attempts = spec.retry.max_attempts if spec.retry is not None else MODULE_MAX_ATTEMPTS
    evidence: list[str] = []
    new_timeout = spec.timeout
    new_attempts = current_attempts
    if len(ran) < MIN_RUNS:
        evidence.append(f"{len(ran)} recorded runs: {MIN_RUNS} are needed for a proposal")
    else:
        assert p95 is not None
        new_timeout = proposed_timeout(p95)
        evidence.append(
            f"p95 {report_ms(p95)} ms over {len(durations)} attempts x {MARGIN} → timeout"
            f" {new_timeout:g} s"
            + (f" (now {spec.timeout:g} s)" if spec.timeout is not None else " (now none)")
        )
        if timeouts:
            evidence.append(
                f"{timeouts} runs hit the timeout: their durations stop there, so the p95 may"
                " be the timeout's, not the module's"
            )
        if spec.kind in LM_KINDS or spec.kind == "dspy":
            if transient and rate is not None:
                needed = attempts_for(rate)
                new_attempts = max(current_attempts, needed)
                evidence.append(
                    f"{transient} of {attempts} attempts failed transiently ({rate:.1%}) →"
                    f" {new_attempts} attempts leave ≤ {EXHAUSTION_TARGET:.1%} of calls failing"
                )
                if needed == MAX_ATTEMPTS and rate**MAX_ATTEMPTS > EXHAUSTION_TARGET:
                    evidence.append(
                        f"even {MAX_ATTEMPTS} attempts do not reach that: the backend needs"
                        " attention (failover, a coordinator group)"
                    )
            else:
                evidence.append(f"no transient failure in {attempts} attempts: retries stay")
    return ModuleTuning(
        module=name,
        runs=len(ran),
        p50_ms=report_ms(p50),
        p95_ms=report_ms(p95),
        timeouts=timeouts,
        attempts=attempts,
        transient_failures=transient,
        transient_rate=rate,
        timeout=spec.timeout,
        proposed_timeout=new_timeout,
        max_attempts=current_attempts,
        proposed_max_attempts=new_attempts,
        evidence=evidence,
    )


def _estimates(program: Program, medians: Mapping[str, float]) -> dict[str, float]:
    plan = program.plan(medians)
    durations = plan.durations_ms
    return {
        "sequential": round(sum(durations.values()), 3),
        "parallel": round(sum(max(durations[m] for m in level) for level in plan.levels), 3),
        "optimized": round(plan.estimated_makespan, 3),
    }


def _peak_lm_modules(program: Program, runs: Mapping[str | None, list[StepRecord]]) -> int:
    """The most LM modules that ran at the same time in one recorded run."""
    peak = 0
    for steps in runs.values():
        edges: list[tuple[Any, int]] = []
        for step in steps:
            spec = program.modules.get(step.module)
            if spec is None or spec.kind not in LM_KINDS or not step_ran(step):
                continue
            if step.started_at is None or step.ended_at is None:
                continue
            edges += [(step.started_at, 1), (step.ended_at, -1)]
        running = 0
        for _, delta in sorted(edges, key=lambda e: (e[0], e[1])):  # ends before starts
            running += delta
            peak = max(peak, running)
    return peak


def _strategy(
    program: Program,
    ran: Mapping[str, list[float]],
    runs: Mapping[str | None, list[StepRecord]],
    critical_path: Sequence[str],
) -> StrategyTuning:
    current: str = program.spec.strategy
    medians = {m: percentile(v, 50) or 0.0 for m, v in ran.items() if v}
    estimated = _estimates(program, medians)
    evidence: list[str] = []
    proposed = current
    if not medians:
        evidence.append("no recorded runs: the strategy stays")
    elif current == "resource_aware":
        evidence.append("resource_aware admits modules by capacity: it stays")
    else:
        # on a tie: keep the current one, else the engine's default, then the simpler ones
        preference = [current, *reversed(STRATEGIES)]
        best = min(estimated, key=lambda s: (estimated[s], preference.index(s)))
        if estimated[best] < estimated.get(current, math.inf):
            proposed = best
        evidence.append(
            "estimated run time with recorded medians: "
            + ", ".join(f"{s} {v:g} ms" for s, v in estimated.items())
            + f" → {proposed}"
        )
    if critical_path:
        evidence.append("recorded critical path: " + " → ".join(critical_path))
    return StrategyTuning(
        current=current,
        proposed=proposed,
        estimated_ms=estimated,
        critical_path=list(critical_path),
        peak_lm_modules=_peak_lm_modules(program, runs),
        evidence=evidence,
    )


# ------------------------------------------------------------------------------ the action


async def tune(
    store: Store,
    cache: ProgramCache,
    name: str,
    *,
    version: int | None = None,
    limit: int = 500,
    apply: bool = False,
) -> TuneProposal:
    """Propose timeouts, retry budgets and the strategy from a version's recorded runs.

    Args:
        store: the store.
        cache: parsed programs.
        name: the program.
        version: the version whose history is read (default: the current one, else the
            newest).
        limit: how many of the most recent executions to analyse.
        apply: write the proposal as a new ``draft`` version (when it changes anything).

    Raises:
        NotFoundError: no such program (version).
    """
    version = await default_version(store, name, version)
    record = await store.get_program(name, version)
    program = cache.get(record)
    raw = await store.list_steps_for_program(
        name, version=record.version, limit=max(1, limit) * max(1, len(program.modules))
    )
    runs: dict[str | None, list[StepRecord]] = defaultdict(list)
    for step in raw:  # newest first
        if step.execution_id in runs or len(runs) < limit:
            runs[step.execution_id].append(step)
    by_module: dict[str, list[StepRecord]] = defaultdict(list)
    ran: dict[str, list[float]] = defaultdict(list)
    for steps in runs.values():
        for step in steps:
            if step.module in program.modules:
                by_module[step.module].append(step)
                if step_ran(step):
                    ran[step.module].append(step_duration(step))
    summary = summarize([s for steps in runs.values() for s in steps], program_deps(program))
    modules = [_module_tuning(m, program, by_module.get(m, [])) for m in program.modules]
    strategy = _strategy(program, ran, runs, summary.critical_path)
    changes = _changes(modules, strategy)
    notes: list[str] = []
    if strategy.peak_lm_modules > 1:
        notes.append(
            f"up to {strategy.peak_lm_modules} LM modules ran at once: an lm_slots capacity of"
            f" at least {strategy.peak_lm_modules} in [resources] of dspex.toml lets them"
        )
    proposal = TuneProposal(
        program=name,
        version=record.version,
        runs=summary.runs,
        modules=modules,
        strategy=strategy,
        changes=changes,
        notes=notes,
    )
    if not apply or not changes:
        return proposal
    spec = _tuned_spec(program, modules, strategy, proposal)
    Program.from_dict(spec)  # the new version must load as a program
    stored = await store.put_program(name, spec, spec_hash(spec))
    return proposal.model_copy(update={"applied_version": stored.version})


def _changes(modules: Sequence[ModuleTuning], strategy: StrategyTuning) -> list[str]:
    out: list[str] = []
    for m in modules:
        if m.proposed_timeout is not None and m.proposed_timeout != m.timeout:
            now = f"{m.timeout:g} s" if m.timeout is not None else "none"
            out.append(f"modules.{m.module}.timeout: {now} → {m.proposed_timeout:g} s")
        if m.proposed_max_attempts != m.max_attempts:
            out.append(
                f"modules.{m.module}.retry.max_attempts: {m.max_attempts} →"
                f" {m.proposed_max_attempts}"
            )
    if strategy.proposed != strategy.current:
        out.append(f"strategy: {strategy.current} → {strategy.proposed}")
    return out


def _tuned_spec(
    program: Program,
    modules: Sequence[ModuleTuning],
    strategy: StrategyTuning,
    proposal: TuneProposal,
) -> dict[str, Any]:
    spec = copy.deepcopy(program.to_dict())
    for m in modules:
        entry = spec["modules"][m.module]
        if m.proposed_timeout is not None:
            entry["timeout"] = m.proposed_timeout
        if m.proposed_max_attempts != m.max_attempts:
            retry = entry.get("retry")
            if isinstance(retry, dict):
                entry["retry"] = {**retry, "max_attempts": m.proposed_max_attempts}
            else:
                entry["retry"] = {"max_attempts": m.proposed_max_attempts}
    spec["strategy"] = strategy.proposed
    lineage = {
        "parent_version": proposal.version,
        "tune": {"runs": proposal.runs, "changes": proposal.changes},
    }
    spec["metadata"] = {**spec.get("metadata", {}), LINEAGE_KEY: lineage}
    return spec

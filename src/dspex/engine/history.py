"""Pure analysis of recorded steps: module timings, the critical path of runs, bottlenecks.

Nothing here does I/O: the runtime reads steps from the store and hands them over with the
program's dependencies (module → the modules it waits for).

The critical path of one recorded run is rebuilt from step end times by the rule of
:mod:`dspex._critical_path` (start at the module that ended last, then repeatedly step back to the
dependency that ended last, the one that actually held the module up), the same rule the graph
report applies to the run. Over many runs the most frequent path is *the* critical path, and a
module's ``critical_share`` is the part of all critical-path time that was spent in it.

Example:
    >>> summary = summarize(steps, {"answer": ("retrieve",), "retrieve": ()})  # doctest: +SKIP
    >>> summary.critical_path  # doctest: +SKIP
    ('retrieve', 'answer')
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from dspex._critical_path import critical_path, is_child_step
from dspex._percentile import percentile
from dspex.records import StepRecord, StepStatus

__all__ = [
    "HistoryBottleneck",
    "HistorySummary",
    "ModuleStats",
    "median_durations",
    "run_critical_path",
    "step_duration",
    "step_ran",
    "summarize",
]

_MAX_BOTTLENECKS = 3
_MICRO = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class ModuleStats:
    """One module's recorded performance (durations in ms)."""

    module: str
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    success_rate: float | None
    critical_share: float = 0.0


@dataclass(frozen=True, slots=True)
class HistoryBottleneck:
    """A module worth looking at: ``reason`` is ``critical_path`` or ``slowest_p95``."""

    module: str
    reason: str
    share: float


@dataclass(frozen=True, slots=True)
class HistorySummary:
    """What the recorded runs say about a program.

    Attributes:
        runs: how many recorded runs were analysed.
        modules: per-module statistics, in first-seen order of the deps mapping then the steps.
        critical_path: the most frequent critical path of the runs (ties: the longest by total
            median duration), first module first.
        bottlenecks: modules with the largest share of critical-path time, then the slowest p95.
    """

    runs: int
    modules: tuple[ModuleStats, ...]
    critical_path: tuple[str, ...]
    bottlenecks: tuple[HistoryBottleneck, ...]


def step_ran(step: StepRecord) -> bool:
    """Whether a recorded step started and ended (completed or failed): it has a duration."""
    return step.started_at is not None and step.status in (StepStatus.COMPLETED, StepStatus.FAILED)


def step_duration(step: StepRecord) -> float:
    """A recorded step's duration in ms (from its start and end when none was recorded)."""
    if step.duration_ms is not None:
        return step.duration_ms
    if step.started_at is not None and step.ended_at is not None:
        return (step.ended_at - step.started_at).total_seconds() * 1000.0
    return 0.0


def median_durations(steps: Iterable[StepRecord]) -> dict[str, float]:
    """Median recorded duration per module (ms), for planning the longest remaining path."""
    by_module: dict[str, list[float]] = defaultdict(list)
    for step in steps:
        if step_ran(step) and not is_child_step(step.module):
            by_module[step.module].append(step_duration(step))
    out: dict[str, float] = {}
    for module, values in by_module.items():
        median = percentile(values, 50)
        if median is not None:
            out[module] = median
    return out


def run_critical_path(
    steps: Iterable[StepRecord], deps: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The critical path of ONE recorded run, first module first (empty if nothing ran).

    The rule is :func:`dspex._critical_path.critical_path`, the one the graph report and the
    dashboard apply to the same run; steps without a start and an end time take no part.

    Args:
        steps: the run's steps.
        deps: module → the modules it waits for.
    """
    spans = [(s.module, s.started_at, s.ended_at) for s in steps]
    timed = [(m, start, end) for m, start, end in spans if start is not None and end is not None]
    if not timed:
        return ()
    base = min(start for _, start, _ in timed)
    # whole microseconds since the earliest start: exact, so equal end times tie exactly
    return critical_path(
        ((m, (start - base) // _MICRO, (end - base) // _MICRO) for m, start, end in timed), deps
    )


def summarize(steps: Iterable[StepRecord], deps: Mapping[str, Sequence[str]]) -> HistorySummary:
    """Per-module statistics, the critical path and bottlenecks of recorded runs.

    Args:
        steps: recorded steps of any number of runs (grouped by ``execution_id``).
        deps: module → the modules it waits for (the program's current graph).
    """
    runs: dict[str | None, list[StepRecord]] = defaultdict(list)
    durations: dict[str, list[float]] = defaultdict(list)
    outcomes: dict[str, list[bool]] = defaultdict(list)
    order: dict[str, None] = dict.fromkeys(deps)
    for step in steps:
        if is_child_step(step.module):  # a predictor call inside a dspy module
            continue
        runs[step.execution_id].append(step)
        order.setdefault(step.module)
        if step_ran(step):
            durations[step.module].append(step_duration(step))
            outcomes[step.module].append(step.status is StepStatus.COMPLETED)

    paths: Counter[tuple[str, ...]] = Counter()
    critical_ms: dict[str, float] = defaultdict(float)
    for run_steps in runs.values():
        path = run_critical_path(run_steps, deps)
        if not path:
            continue
        paths[path] += 1
        step_ms = {s.module: step_duration(s) for s in run_steps}
        for module in path:
            critical_ms[module] += step_ms[module]
    total_critical = sum(critical_ms.values())

    medians = {m: percentile(v, 50) or 0.0 for m, v in durations.items()}
    modules = tuple(
        ModuleStats(
            module=module,
            runs=len(durations.get(module, ())),
            p50_ms=percentile(durations.get(module, []), 50),
            p95_ms=percentile(durations.get(module, []), 95),
            success_rate=(
                sum(outcomes[module]) / len(outcomes[module]) if outcomes.get(module) else None
            ),
            critical_share=critical_ms.get(module, 0.0) / total_critical if total_critical else 0.0,
        )
        for module in order
    )
    critical_path: tuple[str, ...] = ()
    if paths:
        critical_path = max(paths, key=lambda p: (paths[p], sum(medians.get(m, 0.0) for m in p)))
    return HistorySummary(
        runs=sum(1 for r in runs.values() if any(step_ran(s) for s in r)),
        modules=modules,
        critical_path=critical_path,
        bottlenecks=_bottlenecks(modules),
    )


def _bottlenecks(modules: Sequence[ModuleStats]) -> tuple[HistoryBottleneck, ...]:
    out: list[HistoryBottleneck] = []
    on_path = sorted(
        (m for m in modules if m.critical_share > 0), key=lambda m: (-m.critical_share, m.module)
    )
    out.extend(HistoryBottleneck(m.module, "critical_path", m.critical_share) for m in on_path)
    out = out[:_MAX_BOTTLENECKS]
    timed = [m for m in modules if m.p95_ms is not None]
    total_p95 = sum(m.p95_ms or 0.0 for m in timed)
    if timed and total_p95 > 0:
        slowest = max(timed, key=lambda m: (m.p95_ms or 0.0, m.module))
        out.append(
            HistoryBottleneck(slowest.module, "slowest_p95", (slowest.p95_ms or 0.0) / total_p95)
        )
    return tuple(out)

"""Pure graph analysis: order, levels, critical path, slack and width of a validated graph.

Nothing here does I/O or touches the event loop; everything is a few linear passes over the
index-based :class:`~dspex.engine.graph.Graph`, so a 10,000-module program plans in milliseconds.

Durations weight the critical path: recorded ones (for example median step durations from history)
win over a module's ``estimated_ms``, which wins over a per-kind default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dspex.engine.graph import Graph
from dspex.engine.spec import ModuleSpec

__all__ = ["DEFAULT_ESTIMATES_MS", "Plan", "analyze"]

_DUST = 1e-9

DurationSource = Literal["recorded", "spec", "default"]

DEFAULT_ESTIMATES_MS: Mapping[str, float] = {
    "predict": 500.0,
    "chain_of_thought": 1000.0,
    "retrieve": 50.0,
    "python": 10.0,
    "dspy": 1000.0,
}
"""Planning estimates per module kind when neither history nor ``estimated_ms`` says otherwise."""


@dataclass(frozen=True, slots=True, eq=False)
class Plan:
    """What a program's graph looks like before it runs.

    Attributes:
        order: a topological order of module names (dependencies first).
        levels: modules grouped by depth: level 0 has no dependencies; a module's level is one more
            than its deepest dependency. The ``parallel`` strategy runs level by level.
        critical_path: the longest chain of dependent modules by duration, first to last.
        width: the most modules in one level (the parallelism available).
        durations_ms: the duration used for each module.
        duration_sources: where each duration came from: ``recorded`` (the median of recorded
            runs), ``spec`` (the module's ``estimated_ms``) or ``default`` (the kind's default).
        slack: per module, how many ms it may be delayed without delaying the whole run.
        earliest_start: per module, the earliest start (ms) with unlimited parallelism.
        remaining_ms: per module, the longest duration from its start to the end of the run
            (used to start the longest remaining work first).
        estimated_makespan: the length of the critical path in ms.
    """

    order: tuple[str, ...]
    levels: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    width: int
    durations_ms: Mapping[str, float]
    slack: Mapping[str, float]
    earliest_start: Mapping[str, float]
    remaining_ms: Mapping[str, float]
    estimated_makespan: float
    duration_sources: Mapping[str, DurationSource] = field(default_factory=dict)
    # index-based views for the scheduler (same information, no name lookups)
    level_of: tuple[int, ...] = field(repr=False, default=())
    remaining_by_index: tuple[float, ...] = field(repr=False, default=())
    order_by_index: tuple[int, ...] = field(repr=False, default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view with stable keys."""
        return {
            "order": list(self.order),
            "levels": [list(level) for level in self.levels],
            "critical_path": list(self.critical_path),
            "width": self.width,
            "estimated_makespan": self.estimated_makespan,
            "durations_ms": dict(self.durations_ms),
            "duration_sources": dict(self.duration_sources),
            "slack": dict(self.slack),
            "earliest_start": dict(self.earliest_start),
        }


def analyze(
    graph: Graph,
    modules: Sequence[ModuleSpec],
    durations: Mapping[str, float] | None = None,
) -> Plan:
    """Plan a validated graph.

    Args:
        graph: the validated graph.
        modules: the module specs in graph index order.
        durations: recorded durations in ms by module name; they override estimates.

    Returns:
        The :class:`Plan`.
    """
    names = graph.names
    n = len(names)
    deps = graph.deps
    dependents = graph.dependents
    topo = graph.topo
    weight, sources = _weights(names, modules, durations or {})

    # Forward pass: levels and earliest finish; remember the predecessor on the longest path.
    level = [0] * n
    finish = [0.0] * n
    via = [-1] * n
    for i in topo:
        best_level = -1
        best_finish = 0.0
        best = -1
        for d in deps[i]:
            if level[d] > best_level:
                best_level = level[d]
            if best < 0 or finish[d] > best_finish:
                best_finish = finish[d]
                best = d
        level[i] = best_level + 1
        finish[i] = best_finish + weight[i]
        via[i] = best

    # Backward pass: the longest remaining duration from each module's start to the end.
    remaining = [0.0] * n
    for i in reversed(topo):
        tail = 0.0
        for c in dependents[i]:
            if remaining[c] > tail:
                tail = remaining[c]
        remaining[i] = weight[i] + tail

    makespan = max(finish) if n else 0.0
    end = finish.index(makespan) if n else -1
    path: list[int] = []
    while end >= 0:
        path.append(end)
        end = via[end]
    path.reverse()

    buckets: list[list[str]] = [[] for _ in range(max(level) + 1 if n else 0)]
    for i in topo:
        buckets[level[i]].append(names[i])
    start = [f - w for f, w in zip(finish, weight, strict=True)]
    # slack = latest start - earliest start = makespan - (earliest start + remaining); float sums
    # along different paths leave dust, and a critical module has exactly zero slack.
    slack = [makespan - s - r for s, r in zip(start, remaining, strict=True)]
    return Plan(
        order=tuple([names[i] for i in topo]),
        levels=tuple(map(tuple, buckets)),
        critical_path=tuple([names[i] for i in path]),
        width=max(map(len, buckets), default=0),
        durations_ms=dict(zip(names, weight, strict=True)),
        duration_sources=dict(zip(names, sources, strict=True)),
        slack={name: v if v > _DUST else 0.0 for name, v in zip(names, slack, strict=True)},
        earliest_start=dict(zip(names, start, strict=True)),
        remaining_ms=dict(zip(names, remaining, strict=True)),
        estimated_makespan=makespan,
        level_of=tuple(level),
        remaining_by_index=tuple(remaining),
        order_by_index=topo,
    )


def _weights(
    names: Sequence[str], modules: Sequence[ModuleSpec], recorded: Mapping[str, float]
) -> tuple[list[float], list[DurationSource]]:
    """Each module's duration and its source: recorded, else ``estimated_ms``, else the default."""
    weight: list[float] = []
    sources: list[DurationSource] = []
    for name, spec in zip(names, modules, strict=True):
        value = recorded.get(name) if recorded else None
        source: DurationSource = "recorded"
        if value is None:
            value, source = spec.estimated_ms, "spec"
            if value is None:
                value, source = DEFAULT_ESTIMATES_MS[spec.kind], "default"
        weight.append(float(value))
        sources.append(source)
    return weight, sources

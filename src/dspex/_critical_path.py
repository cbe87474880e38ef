"""The one rule for a recorded run's critical path (history, ``dspex graph``, the dashboard).

A run's critical path is the chain of modules that actually determined its length. Start at the
module that ended last and walk back, at each module, to the dependency that ended last (the one
the module was really waiting for), until a module with no recorded dependency:

- every timed step takes part, a zero-length one (a skipped module drawn where it was skipped)
  included, so a chain can run through the failure that caused it;
- on equal end times the longer step wins (it is the one that was being waited on), then the one
  given first;
- a module recorded twice counts with its latest end;
- dependencies without a timed step are ignored, and the walk stops where it would revisit a
  module (a dependency cycle);
- a child step (a predictor call inside a ``dspy`` module, named ``<module>.<predictor>``: a
  dotted name no module of a program can have) takes no part (:func:`is_child_step`).

This is pure and low in the layers so that :mod:`dspex.engine.history` (over store records) and
:mod:`dspex.reports` (over Gantt views) apply the same rule: they only adapt their step types to
``(module, start, end)`` triples.

Example:
    >>> run = [("a", 0.0, 10.0), ("b", 10.0, 50.0), ("c", 10.0, 20.0), ("d", 50.0, 60.0)]
    >>> critical_path(run, {"b": ["a"], "c": ["a"], "d": ["b", "c"]})
    ('a', 'b', 'd')
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["StepTiming", "critical_path", "is_child_step"]

StepTiming = tuple[str, float, float]
"""One timed step: ``(module, start, end)`` on any common clock (ms from the run's start)."""


def is_child_step(module: str) -> bool:
    """Whether a recorded step is a predictor call inside a ``dspy`` module (its dotted name
    ``<module>.<predictor>``), not a module of the program graph."""
    return "." in module


def critical_path(
    timings: Iterable[StepTiming], deps: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The critical path of ONE recorded run, first module first (empty when nothing is timed).

    Args:
        timings: the run's timed steps as ``(module, start, end)``.
        deps: each module's dependencies by name (modules missing here have none).
    """
    latest: dict[str, tuple[float, float]] = {}
    for module, start, end in timings:
        if is_child_step(module):
            continue
        seen = latest.get(module)
        if seen is None or end > seen[1]:
            latest[module] = (start, end)
    if not latest:
        return ()

    def waited_on(module: str) -> tuple[float, float]:
        start, end = latest[module]
        return end, end - start

    current: str | None = max(latest, key=waited_on)
    path: list[str] = []
    visited: set[str] = set()
    while current is not None and current not in visited:
        path.append(current)
        visited.add(current)
        candidates = [d for d in deps.get(current, ()) if d in latest]
        current = max(candidates, key=waited_on) if candidates else None
    path.reverse()
    return tuple(path)

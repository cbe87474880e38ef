"""Prometheus metrics of the service, collected through runtime hooks.

The service registers :class:`ServiceMetrics` as a runtime hook: ``after_execution`` counts
each recorded execution and observes its duration per program; ``after_step`` observes each
backend call's duration per backend (every attempt, when a coordinator group reports them).
Batch items count through the batches' progress events. ``/metrics`` renders them in the
Prometheus text format (version 0.0.4) with the breaker states and the batch queue depth,
which are read when scraped.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex import ExecutionResult

__all__ = ["BREAKER_VALUES", "Histogram", "ServiceMetrics", "render"]

# Seconds: from a cached mock call to a slow LM answer.
BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

BREAKER_VALUES: dict[str, int] = {"closed": 0, "half_open": 1, "open": 2}


class Histogram:
    """Cumulative-bucket histogram of one label set."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1


class ServiceMetrics:
    """Counters and histograms fed by runtime hooks (thread-safe: DSPy may call from threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executions: dict[tuple[str, str], int] = {}
        self.durations: dict[str, Histogram] = {}
        self.backend_calls: dict[str, Histogram] = {}

    # -- runtime hooks ------------------------------------------------------------------------

    def after_execution(self, *, result: ExecutionResult) -> None:
        """Count one recorded execution and observe its duration."""
        self.count_execution(result.program, result.status, result.duration_ms)

    def after_step(self, *, run_id: str, step: Any) -> None:
        """Observe each backend call a module made."""
        details = getattr(step, "attempt_details", None) or ()
        observations: list[tuple[str, float]] = [
            (info.backend, max(info.duration_ms, 0.0) / 1000.0) for info in details
        ]
        if not observations and step.backend is not None and step.started_ms is not None:
            observations.append((step.backend, max(step.duration_ms, 0.0) / 1000.0))
        with self._lock:
            for backend, seconds in observations:
                self.backend_calls.setdefault(backend, Histogram()).observe(seconds)

    # -- batches ------------------------------------------------------------------------------

    def count_execution(self, program: str, status: str, duration_ms: float | None) -> None:
        """Count one finished execution (``duration_ms`` observed when known)."""
        with self._lock:
            key = (program, status)
            self.executions[key] = self.executions.get(key, 0) + 1
            if duration_ms is not None:
                self.durations.setdefault(program, Histogram()).observe(duration_ms / 1000.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items())


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _histogram(name: str, label: str, series: Mapping[str, Histogram]) -> Iterable[str]:
    for key in sorted(series):
        h = series[key]
        running = 0
        for bound, count in zip((*BUCKETS, math.inf), h.counts, strict=True):
            running += count
            yield f"{name}_bucket{{{_labels({label: key, 'le': _number(bound)})}}} {running}"
        yield f"{name}_sum{{{_labels({label: key})}}} {h.sum!r}"
        yield f"{name}_count{{{_labels({label: key})}}} {h.count}"


def render(
    metrics: ServiceMetrics,
    *,
    breakers: Mapping[str, str],
    queue_depth: int,
    running_batches: int,
) -> str:
    """The Prometheus text exposition of everything measured."""
    with metrics._lock:
        executions = dict(metrics.executions)
        durations = {k: _copy(v) for k, v in metrics.durations.items()}
        calls = {k: _copy(v) for k, v in metrics.backend_calls.items()}
    lines = [
        "# HELP dspex_executions_total Executions recorded by this process, by program and status.",
        "# TYPE dspex_executions_total counter",
    ]
    for (program, status), count in sorted(executions.items()):
        lines.append(
            f"dspex_executions_total{{{_labels({'program': program, 'status': status})}}} {count}"
        )
    lines += [
        "# HELP dspex_execution_duration_seconds Duration of finished executions, by program.",
        "# TYPE dspex_execution_duration_seconds histogram",
        *_histogram("dspex_execution_duration_seconds", "program", durations),
        "# HELP dspex_backend_attempt_duration_seconds Duration of backend calls, by backend.",
        "# TYPE dspex_backend_attempt_duration_seconds histogram",
        *_histogram("dspex_backend_attempt_duration_seconds", "backend", calls),
        "# HELP dspex_breaker_state Circuit breaker state (0 closed, 1 half-open, 2 open).",
        "# TYPE dspex_breaker_state gauge",
    ]
    for backend, state in sorted(breakers.items()):
        value = BREAKER_VALUES.get(state, 2)
        lines.append(f"dspex_breaker_state{{{_labels({'backend': backend})}}} {value}")
    lines += [
        "# HELP dspex_batch_queue_depth Items of running batches not finished yet.",
        "# TYPE dspex_batch_queue_depth gauge",
        f"dspex_batch_queue_depth {queue_depth}",
        "# HELP dspex_batches_running Batches running in this process.",
        "# TYPE dspex_batches_running gauge",
        f"dspex_batches_running {running_batches}",
    ]
    return "\n".join(lines) + "\n"


def _copy(h: Histogram) -> Histogram:
    out = Histogram()
    out.counts = list(h.counts)
    out.sum = h.sum
    out.count = h.count
    return out

"""Prometheus metrics of the service, collected through runtime hooks.

The service registers :class:`ServiceMetrics` as a runtime hook: ``after_execution`` counts
each recorded execution and observes its duration per program; ``after_step`` observes each
backend call's duration per backend (every attempt, when a coordinator group reports them).
Batch items count through the batches' progress events. ``/metrics`` renders them with
``prometheus_client`` in the Prometheus text format (version 0.0.4), with the breaker states and
the batch queue depth, which are read when scraped.

Each :class:`ServiceMetrics` has a registry of its own (never ``prometheus_client``'s global
one), so a host process's metrics are not mixed into the service's, and two services in one
process do not share counts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dspex import ExecutionResult

__all__ = ["BREAKER_VALUES", "BUCKETS", "ServiceMetrics", "render"]

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


class _WithoutCreated(Collector):
    """The given metrics without their ``_created`` series (a timestamp per label set that the
    service never exposed and a scraper does not need)."""

    def __init__(self, metrics: Iterable[Counter | Histogram]) -> None:
        self._metrics = tuple(metrics)

    def collect(self) -> Iterator[Metric]:
        for metric in self._metrics:
            for family in metric.collect():
                family.samples = [s for s in family.samples if not s.name.endswith("_created")]
                yield family


class _ScrapeGauges(Collector):
    """The values read when scraped: breaker states and the batches' queue."""

    def __init__(self) -> None:
        self.breakers: Mapping[str, str] = {}
        self.queue_depth = 0
        self.running_batches = 0

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "dspex_breaker_state",
            "Circuit breaker state (0 closed, 1 half-open, 2 open).",
            labels=["backend"],
        )
        for backend, state in sorted(self.breakers.items()):
            states.add_metric([backend], BREAKER_VALUES.get(state, 2))
        yield states
        yield GaugeMetricFamily(
            "dspex_batch_queue_depth",
            "Items of running batches not finished yet.",
            value=self.queue_depth,
        )
        yield GaugeMetricFamily(
            "dspex_batches_running",
            "Batches running in this process.",
            value=self.running_batches,
        )


class ServiceMetrics:
    """Counters and histograms fed by runtime hooks (thread-safe: DSPy may call from threads).

    Attributes:
        registry: this service's own registry; :func:`render` exposes it.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter(
            "dspex_executions",
            "Executions recorded by this process, by program and status.",
            ["program", "status"],
            registry=None,
        )
        self.durations = Histogram(
            "dspex_execution_duration_seconds",
            "Duration of finished executions, by program.",
            ["program"],
            buckets=BUCKETS,
            registry=None,
        )
        self.backend_calls = Histogram(
            "dspex_backend_attempt_duration_seconds",
            "Duration of backend calls, by backend.",
            ["backend"],
            buckets=BUCKETS,
            registry=None,
        )
        self.tokens = Counter(
            "dspex_tokens",
            "LM tokens used by this process's executions, by program, module and model.",
            ["program", "module", "model"],
            registry=None,
        )
        self.cost = Counter(
            "dspex_cost_usd",
            "US dollars spent by this process's executions, by program, module and model.",
            ["program", "module", "model"],
            registry=None,
        )
        # Each labelled series is looked up once: ``labels()`` checks and locks on every call,
        # and the service counts on every execution (prometheus_client keeps every series
        # anyway, so the caches hold nothing more than the metrics do)
        self._calls_by_backend: dict[str, Any] = {}
        self._executions_by_key: dict[tuple[str, str], Any] = {}
        self._durations_by_program: dict[str, Any] = {}
        self._tokens_by_key: dict[tuple[str, str, str], Any] = {}
        self._cost_by_key: dict[tuple[str, str, str], Any] = {}
        self._gauges = _ScrapeGauges()
        self._scrape_lock = threading.Lock()
        self.registry.register(
            _WithoutCreated(
                (self.executions, self.durations, self.backend_calls, self.tokens, self.cost)
            )
        )
        self.registry.register(self._gauges)

    # -- runtime hooks ------------------------------------------------------------------------

    def after_execution(self, *, result: ExecutionResult) -> None:
        """Count one recorded execution, observe its duration and count its tokens and cost."""
        self.count_execution(result.program, result.status, result.duration_ms)
        for step in result.steps:
            totals = {model: counts.get("total_tokens", 0) for model, counts in step.usage.items()}
            used = sum(totals.values())
            for model, tokens in totals.items():
                # a step's cost by model: its share of the step's tokens (one model: all of it)
                share = tokens / used if used else 0.0
                self.count_spend(result.program, step.module, model, tokens, step.cost_usd * share)

    def after_step(self, *, run_id: str, step: Any) -> None:
        """Observe each backend call a module made."""
        details = getattr(step, "attempt_details", None) or ()
        observations: list[tuple[str, float]] = [
            (info.backend, max(info.duration_ms, 0.0) / 1000.0) for info in details
        ]
        if not observations and step.backend is not None and step.started_ms is not None:
            observations.append((step.backend, max(step.duration_ms, 0.0) / 1000.0))
        for backend, seconds in observations:
            series = self._calls_by_backend.get(backend)
            if series is None:
                series = self._calls_by_backend[backend] = self.backend_calls.labels(backend)
            series.observe(seconds)

    # -- batches ------------------------------------------------------------------------------

    def count_spend(
        self, program: str, module: str, model: str, tokens: int, cost_usd: float
    ) -> None:
        """Count tokens and US dollars one module spent on one model."""
        key = (program, module, model)
        if tokens:
            series = self._tokens_by_key.get(key)
            if series is None:
                series = self._tokens_by_key[key] = self.tokens.labels(*key)
            series.inc(tokens)
        if cost_usd:
            spent = self._cost_by_key.get(key)
            if spent is None:
                spent = self._cost_by_key[key] = self.cost.labels(*key)
            spent.inc(cost_usd)

    def count_execution(self, program: str, status: str, duration_ms: float | None) -> None:
        """Count one finished execution (``duration_ms`` observed when known)."""
        key = (program, str(status))
        series = self._executions_by_key.get(key)
        if series is None:
            series = self._executions_by_key[key] = self.executions.labels(*key)
        series.inc()
        if duration_ms is not None:
            durations = self._durations_by_program.get(program)
            if durations is None:
                durations = self._durations_by_program[program] = self.durations.labels(program)
            durations.observe(duration_ms / 1000.0)


def render(
    metrics: ServiceMetrics,
    *,
    breakers: Mapping[str, str],
    queue_depth: int,
    running_batches: int,
) -> str:
    """The Prometheus text exposition of everything measured, with the scrape-time values."""
    with metrics._scrape_lock:
        metrics._gauges.breakers = dict(breakers)
        metrics._gauges.queue_depth = queue_depth
        metrics._gauges.running_batches = running_batches
        return generate_latest(metrics.registry).decode("utf-8")

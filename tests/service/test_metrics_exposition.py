"""``/metrics``: the exposition is valid Prometheus text, from the service's own registry."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dspex.service.metrics import BUCKETS, ServiceMetrics, render

FAMILIES = {
    "dspex_executions": (
        "counter",
        "Executions recorded by this process, by program and status.",
    ),
    "dspex_execution_duration_seconds": (
        "histogram",
        "Duration of finished executions, by program.",
    ),
    "dspex_backend_attempt_duration_seconds": (
        "histogram",
        "Duration of backend calls, by backend.",
    ),
    "dspex_breaker_state": (
        "gauge",
        "Circuit breaker state (0 closed, 1 half-open, 2 open).",
    ),
    "dspex_tokens": (
        "counter",
        "LM tokens used by this process's executions, by program, module and model.",
    ),
    "dspex_cost_usd": (
        "counter",
        "US dollars spent by this process's executions, by program, module and model.",
    ),
    "dspex_batch_queue_depth": ("gauge", "Items of running batches not finished yet."),
    "dspex_batches_running": ("gauge", "Batches running in this process."),
}


def _text(metrics: ServiceMetrics, **values: object) -> str:
    scrape: dict[str, object] = {"breakers": {}, "queue_depth": 0, "running_batches": 0}
    scrape.update(values)
    return render(metrics, **scrape)  # type: ignore[arg-type]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def host_counter() -> Iterator[prometheus_client.Counter]:
    counter = prometheus_client.Counter("host_jobs", "A host process's own metric.")
    counter.inc()
    yield counter
    prometheus_client.REGISTRY.unregister(counter)


def test_every_metric_family_keeps_its_name_type_and_help() -> None:
    metrics = ServiceMetrics()
    metrics.count_execution("qa", "completed", 12.0)
    families = {
        f.name: (f.type, f.documentation) for f in text_string_to_metric_families(_text(metrics))
    }
    assert families == FAMILIES


def test_the_exposition_has_no_created_series() -> None:
    metrics = ServiceMetrics()
    metrics.count_execution("qa", "completed", 12.0)
    assert "_created" not in _text(metrics)


def test_label_values_with_quotes_backslashes_and_newlines_read_back_unchanged() -> None:
    metrics = ServiceMetrics()
    program = 'odd "name"\\with\nnewline'
    metrics.count_execution(program, "failed", None)
    samples = _samples(_text(metrics))
    key = ("dspex_executions_total", (("program", program), ("status", "failed")))
    assert samples[key] == 1


def test_histograms_have_every_bucket_a_sum_and_a_count() -> None:
    metrics = ServiceMetrics()
    for ms in (0.5, 20.0, 90_000.0):
        metrics.count_execution("qa", "completed", ms)
    samples = _samples(_text(metrics))
    name = "dspex_execution_duration_seconds"
    buckets = {
        dict(labels)["le"]: value
        for (sample, labels), value in samples.items()
        if sample == f"{name}_bucket"
    }
    assert len(buckets) == len(BUCKETS) + 1
    assert buckets["0.001"] == 1
    assert buckets["60.0"] == 2
    assert buckets["+Inf"] == 3
    assert samples[(f"{name}_count", (("program", "qa"),))] == 3
    assert samples[(f"{name}_sum", (("program", "qa"),))] == pytest.approx(90.0205)


def test_repeated_counts_land_on_one_series_per_label_set() -> None:
    metrics = ServiceMetrics()
    for status in ("completed", "completed", "failed", "completed"):
        metrics.count_execution("qa", status, 10.0)
    metrics.count_execution("rag", "completed", None)
    for backend in ("a", "b", "a"):
        step = SimpleNamespace(attempt_details=(), backend=backend, started_ms=0.0, duration_ms=5.0)
        metrics.after_step(run_id="r", step=step)
    samples = _samples(_text(metrics))
    runs = "dspex_executions_total"
    assert samples[(runs, (("program", "qa"), ("status", "completed")))] == 3
    assert samples[(runs, (("program", "qa"), ("status", "failed")))] == 1
    assert samples[(runs, (("program", "rag"), ("status", "completed")))] == 1
    assert samples[("dspex_execution_duration_seconds_count", (("program", "qa"),))] == 4
    assert ("dspex_execution_duration_seconds_count", (("program", "rag"),)) not in samples
    calls = "dspex_backend_attempt_duration_seconds_count"
    assert samples[(calls, (("backend", "a"),))] == 2
    assert samples[(calls, (("backend", "b"),))] == 1


def test_scrape_time_values_are_those_of_the_latest_scrape() -> None:
    metrics = ServiceMetrics()
    _text(metrics, breakers={"a": "open", "b": "closed"}, queue_depth=4, running_batches=2)
    samples = _samples(_text(metrics, breakers={"b": "half_open"}))
    assert samples[("dspex_breaker_state", (("backend", "b"),))] == 1
    assert ("dspex_breaker_state", (("backend", "a"),)) not in samples
    assert samples[("dspex_batch_queue_depth", ())] == 0
    assert samples[("dspex_batches_running", ())] == 0


def test_two_services_in_one_process_count_apart() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()
    first.count_execution("qa", "completed", None)
    assert "dspex_executions_total" not in _samples(_text(second))


def test_metrics_stay_out_of_the_process_wide_registry(
    host_counter: prometheus_client.Counter,
) -> None:
    metrics = ServiceMetrics()
    metrics.count_execution("qa", "completed", None)
    assert "host_jobs" not in _text(metrics)
    assert b"dspex_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_the_metrics_endpoint_serves_the_text_format(client: TestClient) -> None:
    response = client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert names == set(FAMILIES)

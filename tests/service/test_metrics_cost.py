"""``/metrics`` counts tokens and US dollars by program, module and model, for executions and
batch items alike; a batch submitted over HTTP takes ``max_cost``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service._support import ready_program, service, sse_events

PRICED = """
[prices.mock]
input_cost_per_token = 0.001
output_cost_per_token = 0.002
"""
LABELS = '{model="mock",module="answer",program="qa"}'


@pytest.fixture
def priced(workdir: Path) -> Iterator[TestClient]:
    (workdir / "dspex.toml").write_text(PRICED)
    with service(workdir) as client:
        yield client


def _value(text: str, name: str) -> float:
    found = re.search(rf"^{name}{re.escape(LABELS)} (\S+)$", text, re.MULTILINE)
    assert found is not None, text
    return float(found.group(1))


def test_an_executions_tokens_and_cost_are_counted_by_program_module_and_model(
    priced: TestClient,
) -> None:
    ready_program(priced)
    ran = priced.post("/programs/qa/executions", json={"inputs": {"question": "a b c?"}}).json()
    text = priced.get("/metrics").text
    assert _value(text, "dspex_tokens_total") == ran["usage"]["mock"]["total_tokens"]
    assert _value(text, "dspex_cost_usd_total") == pytest.approx(ran["cost_usd"])
    assert ran["cost_usd"] > 0


def test_batch_items_count_their_tokens_and_cost_too(priced: TestClient) -> None:
    ready_program(priced)
    batch = priced.post("/programs/qa/batches", json=[{"question": "x y?"}] * 3).json()
    events = sse_events(priced.get(f"/batches/{batch['batch_id']}/events").text)
    assert events[-1][0] == "done"
    info = priced.get(f"/batches/{batch['batch_id']}").json()
    text = priced.get("/metrics").text
    assert _value(text, "dspex_cost_usd_total") == pytest.approx(info["cost_usd"])
    assert _value(text, "dspex_tokens_total") > 0


def test_a_batch_over_http_stops_at_its_max_cost(priced: TestClient) -> None:
    ready_program(priced)
    batch = priced.post(
        "/programs/qa/batches?max_concurrency=1&max_cost=0.001", json=[{"question": "x?"}] * 20
    ).json()
    events = sse_events(priced.get(f"/batches/{batch['batch_id']}/events").text)
    assert events[-1][0] == "done"
    info = priced.get(f"/batches/{batch['batch_id']}").json()
    assert info["status"] == "cancelled"
    assert info["counts"]["completed"] < 20
    assert info["stats"]["cost_usd"] >= 0.001
    assert info["cost_usd"] == pytest.approx(info["stats"]["cost_usd"])


def test_a_non_positive_max_cost_is_refused(priced: TestClient) -> None:
    ready_program(priced)
    response = priced.post("/programs/qa/batches?max_cost=0", json=[{"question": "x?"}])
    assert response.status_code == 422


def test_spend_adds_up_per_program_module_and_model_and_nothing_spent_makes_no_series() -> None:
    from dspex.service.metrics import ServiceMetrics, render

    metrics = ServiceMetrics()
    metrics.count_spend("qa", "answer", "mock", 10, 0.5)
    metrics.count_spend("qa", "answer", "mock", 5, 0.25)
    metrics.count_spend("qa", "other", "mock", 0, 0.0)
    text = render(metrics, breakers={}, queue_depth=0, running_batches=0)
    assert _value(text, "dspex_tokens_total") == 15
    assert _value(text, "dspex_cost_usd_total") == 0.75
    assert 'module="other"' not in text

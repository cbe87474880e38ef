"""Operations: readiness, health, metrics, cleanup, signatures."""

from __future__ import annotations

from fastapi.testclient import TestClient
from tests.service._support import ready_program, sse_events

from dspex.service.metrics import ServiceMetrics, render


def test_readyz_reports_the_schema_revision(client: TestClient) -> None:
    response = client.get("/readyz", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["revision"]


def test_health_reports_every_check(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    names = {check["name"] for check in response.json()["checks"]}
    assert {"database", "migrations", "backend:default"} <= names


def test_health_rejects_an_unknown_level(client: TestClient) -> None:
    assert client.get("/health?level=extreme").status_code == 422


def test_cleanup_is_a_dry_run_by_default(client: TestClient) -> None:
    response = client.post("/maintenance/cleanup")
    assert response.status_code == 200
    assert response.json()["dry_run"] is True


def test_cleanup_with_retention_sets_a_cutoff(client: TestClient) -> None:
    response = client.post("/maintenance/cleanup", json={"dry_run": False, "older_than": "30d"})
    assert response.json()["dry_run"] is False
    assert response.json()["retention_cutoff"] is not None


def test_cleanup_rejects_an_unreadable_age(client: TestClient) -> None:
    response = client.post("/maintenance/cleanup", json={"older_than": "soon"})
    assert response.status_code == 422


def test_metrics_count_executions_and_observe_latency(client: TestClient) -> None:
    ready_program(client)
    client.post("/programs/qa/executions", json={"inputs": {"question": "a?"}})
    client.post("/programs/qa/executions", json={"inputs": {"question": "b?"}, "backend": "broken"})
    text = client.get("/metrics", headers={"Authorization": ""}).text
    assert 'dspex_executions_total{program="qa",status="completed"} 1' in text
    assert 'dspex_executions_total{program="qa",status="failed"} 1' in text
    assert 'dspex_execution_duration_seconds_count{program="qa"} 2' in text
    assert 'dspex_backend_attempt_duration_seconds_count{backend="default"} 1' in text
    assert "dspex_batch_queue_depth 0" in text


def test_metrics_count_batch_items(client: TestClient) -> None:
    ready_program(client)
    batch = client.post("/programs/qa/batches", json=[{"question": "x?"}] * 3).json()
    sse_events(client.get(f"/batches/{batch['batch_id']}/events").text)
    text = client.get("/metrics").text
    assert 'dspex_executions_total{program="qa",status="completed"} 3' in text
    # every recorded execution is in the duration histogram too, batch items included
    assert 'dspex_execution_duration_seconds_count{program="qa"} 3' in text


def test_metrics_render_breaker_states_as_numbers() -> None:
    text = render(
        ServiceMetrics(),
        breakers={"a": "closed", "b": "half_open", "c": "open"},
        queue_depth=7,
        running_batches=1,
    )
    assert 'dspex_breaker_state{backend="a"} 0' in text
    assert 'dspex_breaker_state{backend="b"} 1' in text
    assert 'dspex_breaker_state{backend="c"} 2' in text
    assert "dspex_batch_queue_depth 7" in text


def test_metrics_histogram_buckets_are_cumulative() -> None:
    metrics = ServiceMetrics()
    for ms in (0.5, 20.0, 20_000.0):
        metrics.count_execution('p"1', "completed", ms)
    text = render(metrics, breakers={}, queue_depth=0, running_batches=0)
    assert 'dspex_execution_duration_seconds_bucket{le="0.001",program="p\\"1"} 1.0' in text
    assert 'dspex_execution_duration_seconds_bucket{le="0.025",program="p\\"1"} 2.0' in text
    assert 'dspex_execution_duration_seconds_bucket{le="+Inf",program="p\\"1"} 3.0' in text


def test_validate_signature_reports_a_valid_signature(client: TestClient) -> None:
    response = client.post(
        "/signatures/validate", json={"signature": "question: str -> answer: str"}
    )
    assert response.status_code == 200
    assert response.json()["valid"] is True


def test_validate_signature_answers_200_for_an_invalid_one(client: TestClient) -> None:
    response = client.post("/signatures/validate", json={"signature": "question: wat -> a: str"})
    assert response.status_code == 200
    assert response.json()["valid"] is False
    assert response.json()["problems"]


def test_signature_schema_exports_for_openai(client: TestClient) -> None:
    response = client.post(
        "/signatures/schema",
        json={"signature": "question: str -> answer: str", "target": "openai"},
    )
    assert response.status_code == 200
    assert "answer" in str(response.json())


def test_signature_schema_of_an_invalid_signature_is_422(client: TestClient) -> None:
    response = client.post("/signatures/schema", json={"signature": {"inputs": 5}})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "signature_invalid"

"""The response cache over HTTP: ``cache`` on executions, batches and evaluations,
``GET /cache/stats`` (read scope) and ``DELETE /cache`` (admin scope). The backend is the
loopback OpenAI-compatible server, whose request log shows which calls reached it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service._support import READ, error_code, ready_program, service, sse_events
from tests.support.openai_server import OpenAIServer

from dspex.backends.openai_backend import OpenAIBackend


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def client(workdir: Path, server: OpenAIServer) -> Iterator[TestClient]:
    backend = OpenAIBackend("default", base_url=server.base_url, model="loopback-model")
    with service(workdir, backends={"default": backend}) as client:
        ready_program(client)
        yield client
        client.portal.call(backend.aclose)  # type: ignore[union-attr]  # the test's, on its loop


def _ask(client: TestClient, **body: object) -> dict[str, object]:
    response = client.post(
        "/programs/qa/executions", json={"inputs": {"question": "What is DSPy?"}, **body}
    )
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()
    return data


def test_an_execution_with_cache_is_answered_from_it_the_second_time(
    client: TestClient, server: OpenAIServer
) -> None:
    first = _ask(client, cache="read_write")
    second = _ask(client, cache="read_write")
    assert server.request_count == 1
    assert second["outputs"] == first["outputs"]
    steps = second["steps"]
    assert isinstance(steps, list)
    assert steps[0]["cache_hit"] is True
    assert steps[0]["attempts"] == 0
    shown = client.get(f"/executions/{second['execution_id']}").json()
    assert shown["steps"][0]["cache_hit"] is True
    _ask(client)  # no mode: the service's default is off
    assert server.request_count == 2


def test_a_bad_cache_mode_is_refused(client: TestClient, server: OpenAIServer) -> None:
    response = client.post(
        "/programs/qa/executions", json={"inputs": {"question": "q"}, "cache": "always"}
    )
    assert response.status_code == 422
    assert (
        client.post("/programs/qa/batches?cache=always", json=[{"question": "q"}]).status_code
        == 422
    )
    assert server.request_count == 0


def test_a_batch_takes_cache_as_an_option(client: TestClient, server: OpenAIServer) -> None:
    items = [{"question": f"q{i}"} for i in range(3)]
    for mode in ("read_write", "read_only"):
        batch = client.post(f"/programs/qa/batches?cache={mode}", json=items)
        assert batch.status_code == 202, batch.text
        events = sse_events(client.get(f"/batches/{batch.json()['batch_id']}/events").text)
        assert events[-1][0] == "done"
    assert server.request_count == 3


def test_stats_are_readable_and_clearing_needs_admin(
    client: TestClient, server: OpenAIServer
) -> None:
    _ask(client, cache="read_write")
    _ask(client, cache="read_write")
    stats = client.get("/cache/stats", headers=READ)
    assert stats.status_code == 200
    data = stats.json()
    assert (data["entries"], data["hits"]) == (1, 1)
    assert data["by_model"][0]["model"] == "loopback-model"
    assert client.get("/cache/stats?program=other").json()["entries"] == 0
    refused = client.request("DELETE", "/cache", headers=READ)
    assert refused.status_code == 403
    assert error_code(refused) == "forbidden"
    dry = client.request("DELETE", "/cache", json={"dry_run": True})
    assert dry.status_code == 200
    assert dry.json()["deleted"] == 1
    assert client.request("DELETE", "/cache", json={"older_than": "soon"}).status_code == 422
    cleared = client.request("DELETE", "/cache", json={"program": "qa"})
    assert cleared.json() == {
        "deleted": 1,
        "dry_run": False,
        "program": "qa",
        "older_than_s": None,
        "expired": False,
    }
    assert client.get("/cache/stats").json()["entries"] == 0
    _ask(client, cache="read_only")
    assert server.request_count == 2

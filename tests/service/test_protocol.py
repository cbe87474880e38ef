"""HTTP details: JSON bodies take JSON's own types, ``/metrics`` exposure is a setting, the SSE
route documents its events, and a 405 lists every method of the path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient
from tests.service._support import READ, error_code, ready_program, service, sse_events

from dspex.config import ConfigError, load_settings

# ---------------------------------------------------------------------------- JSON types


@pytest.mark.parametrize("value", [0, 1, "false", "true", None])
def test_dry_run_must_be_a_json_boolean(client: TestClient, value: Any) -> None:
    response = client.post("/maintenance/cleanup", json={"dry_run": value})
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["field"] == "body.dry_run"


def test_dry_run_false_really_runs(client: TestClient) -> None:
    response = client.post("/maintenance/cleanup", json={"dry_run": False})
    assert response.status_code == 200
    assert response.json()["dry_run"] is False


@pytest.mark.parametrize("body", [{"version": "1"}, {"version": 1.0}, {"timeout": "5"}])
def test_execution_options_must_have_their_json_types(
    client: TestClient, body: dict[str, Any]
) -> None:
    ready_program(client)
    response = client.post("/programs/qa/executions", json={"inputs": {"question": "q"}, **body})
    assert response.status_code == 422


def test_a_whole_number_timeout_is_a_number(client: TestClient) -> None:
    ready_program(client)
    response = client.post(
        "/programs/qa/executions", json={"inputs": {"question": "q"}, "timeout": 5}
    )
    assert response.status_code == 200


# ---------------------------------------------------------------------------- /metrics


def test_metrics_are_public_by_default(client: TestClient) -> None:
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 200


def test_metrics_set_to_read_need_a_key(workdir: Path) -> None:
    with service(workdir, metrics="read") as client:
        response = client.get("/metrics", headers={"Authorization": ""})
        assert response.status_code == 401
        assert error_code(response) == "unauthorized"
        assert client.get("/metrics", headers=READ).status_code == 200


def test_metrics_exposure_comes_from_the_server_settings(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text('[server]\nmetrics = "read"\n')
    assert load_settings(cwd=workdir, env={}).server.metrics == "read"
    with service(workdir) as client:
        assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401


def test_an_unknown_metrics_exposure_is_a_config_error(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text('[server]\nmetrics = "private"\n')
    with pytest.raises(ConfigError, match="metrics"):
        load_settings(cwd=workdir, env={})


# ---------------------------------------------------------------------------- SSE schema


def _event_schemas(client: TestClient) -> dict[str, dict[str, Any]]:
    doc = client.get("/openapi.json").json()
    content = doc["paths"]["/batches/{batch_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["text/event-stream"]
    kinds = content["text/event-stream"]["itemSchema"]["oneOf"]
    return {kind["properties"]["event"]["const"]: kind for kind in kinds}


def test_the_event_stream_documents_progress_and_done_events(client: TestClient) -> None:
    schemas = _event_schemas(client)
    assert set(schemas) == {"progress", "done"}
    progress = schemas["progress"]["properties"]["data"]["contentSchema"]
    assert {"batch_id", "index", "status", "total", "done"} <= set(progress["properties"])
    done = schemas["done"]["properties"]["data"]["contentSchema"]
    assert {"batch_id", "status", "stats", "error"} <= set(done["properties"])
    assert "$ref" not in json.dumps(progress) + json.dumps(done)


def test_the_events_a_batch_sends_match_their_documented_schemas(client: TestClient) -> None:
    schemas = _event_schemas(client)
    ready_program(client)
    batch = client.post("/programs/qa/batches", json=[{"question": "q?"}] * 3).json()
    events = sse_events(client.get(f"/batches/{batch['batch_id']}/events").text)
    assert [name for name, _ in events] == ["progress"] * 3 + ["done"]
    for name, data in events:
        schema = schemas[name]["properties"]["data"]["contentSchema"]
        jsonschema.Draft202012Validator(schema).validate(data)


def test_the_event_streams_errors_are_documented_as_json(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    responses = doc["paths"]["/batches/{batch_id}/events"]["get"]["responses"]
    assert list(responses["404"]["content"]) == ["application/json"]
    assert client.get("/batches/missing/events").headers["content-type"] == "application/json"


# ---------------------------------------------------------------------------- 405


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/programs", "GET, POST"),
        ("PUT", "/programs/qa", "GET"),
        ("GET", "/programs/qa/initialize", "POST"),
        ("DELETE", "/batches/b1", "GET"),
        ("POST", "/openapi.json", "GET, HEAD"),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, path)
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"
    assert response.headers["allow"] == allowed

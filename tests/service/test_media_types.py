"""Request bodies need a media type the route takes: JSON everywhere, YAML for a program spec,
JSON Lines for batch items. Anything else is ``415`` and nothing is done.

A form or a cross-site ``fetch`` without CORS can only send ``text/plain``, form types or no
type at all, so this also keeps pages on other sites from driving the service.
"""

from __future__ import annotations

import json

import pytest
import yaml
from fastapi.testclient import TestClient
from tests.service._support import QA, error_code, ready_program

FORM = "application/x-www-form-urlencoded"


def _programs(client: TestClient) -> list[str]:
    return [p["name"] for p in client.get("/programs").json()["items"]]


def _batches(client: TestClient) -> list[str]:
    return [b["batch_id"] for b in client.get("/dashboard/batches").json()["items"]]


@pytest.mark.parametrize("content_type", ["text/plain", FORM, "multipart/form-data", None])
def test_a_program_spec_without_a_spec_media_type_is_415_and_not_registered(
    client: TestClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(
        "/programs?initialize=true", content=json.dumps(QA).encode(), headers=headers
    )
    assert response.status_code == 415
    assert error_code(response) == "unsupported_media_type"
    assert _programs(client) == []


def test_a_415_names_the_media_types_the_route_takes(client: TestClient) -> None:
    response = client.post("/programs", content=b"{}", headers={"Content-Type": "text/plain"})
    accepted = response.headers["accept-post"].split(", ")
    assert "application/json" in accepted
    assert "application/yaml" in accepted
    assert "text/plain" in response.json()["error"]["message"]


def test_json_with_a_charset_is_json(client: TestClient) -> None:
    response = client.post(
        "/programs",
        content=json.dumps(QA).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status_code == 201


def test_a_program_spec_as_yaml_is_taken(client: TestClient) -> None:
    response = client.post(
        "/programs", content=yaml.safe_dump(QA), headers={"Content-Type": "text/yaml"}
    )
    assert response.status_code == 201


def test_a_program_spec_as_json_lines_is_415(client: TestClient) -> None:
    response = client.post(
        "/programs", content=json.dumps(QA), headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 415


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/yaml"])
def test_batch_items_without_a_batch_media_type_are_415_and_no_batch_starts(
    client: TestClient, content_type: str | None
) -> None:
    ready_program(client)
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps([{"question": "q?"}]).encode()
    response = client.post("/programs/qa/batches", content=body, headers=headers)
    assert response.status_code == 415
    assert _batches(client) == []


def test_a_resumed_batch_needs_a_batch_media_type_too(client: TestClient) -> None:
    ready_program(client)
    batch = client.post("/programs/qa/batches", json=[{"question": "q?"}]).json()
    client.get(f"/batches/{batch['batch_id']}/events")
    response = client.post(
        f"/batches/{batch['batch_id']}/resume",
        content=b'[{"question": "q?"}]',
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 415


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/yaml"])
def test_an_execution_request_must_be_json(client: TestClient, content_type: str | None) -> None:
    ready_program(client)
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"inputs": {"question": "q?"}}).encode()
    response = client.post("/programs/qa/executions", content=body, headers=headers)
    assert response.status_code == 415
    assert client.get("/executions").json()["items"] == []


@pytest.mark.parametrize(
    "path", ["/signatures/validate", "/signatures/schema", "/maintenance/cleanup"]
)
def test_other_json_routes_refuse_a_form(client: TestClient, path: str) -> None:
    response = client.post(path, content=b"dry_run=false", headers={"Content-Type": FORM})
    assert response.status_code == 415


@pytest.mark.parametrize("action", ["initialize", "archive"])
def test_a_route_without_a_body_takes_a_bare_post(client: TestClient, action: str) -> None:
    client.post("/programs", json=QA)
    assert client.post(f"/programs/qa/{action}").status_code == 200


@pytest.mark.parametrize("action", ["initialize", "archive"])
def test_a_route_without_a_body_refuses_an_empty_form_post(client: TestClient, action: str) -> None:
    client.post("/programs", json=QA)
    response = client.post(f"/programs/qa/{action}", headers={"Content-Type": FORM})
    assert response.status_code == 415
    assert client.get("/programs/qa").json()["program"]["status"] == "draft"


def test_cleanup_without_a_body_is_still_a_dry_run(client: TestClient) -> None:
    response = client.post("/maintenance/cleanup")
    assert response.status_code == 200
    assert response.json()["dry_run"] is True

"""``POST /programs/{name}/executions`` has its own door in front of FastAPI's route: it answers
the requests FastAPI would pass to the endpoint, and hands every other request, body included,
to FastAPI's route, so both answer with one contract."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from tests.service._support import ADMIN, READ, ready_program, state_of

from dspex.service.routes.executions import ExecuteFastPath, _request_body

BODY = b'{"inputs": {"question": "q?"}}'


@pytest.fixture
def doors(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which door each request came through: ``fast``, then ``fastapi`` when handed on."""
    seen: list[str] = []
    apps = [getattr(route, "app", None) for route in client.app.router.routes]
    (fast,) = [app for app in apps if isinstance(app, ExecuteFastPath)]
    router = fast.router
    fast_call = ExecuteFastPath.__call__

    async def through_fast(self: ExecuteFastPath, scope: Any, receive: Any, send: Any) -> None:
        seen.append("fast")
        await fast_call(self, scope, receive, send)

    async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
        seen.append("fastapi")
        await router(scope, receive, send)

    monkeypatch.setattr(ExecuteFastPath, "__call__", through_fast)
    monkeypatch.setattr(fast, "router", through_fastapi)
    return seen


def _post(client: TestClient, path: str = "/programs/qa/executions", **kwargs: Any) -> Any:
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return client.post(path, content=kwargs.pop("content", BODY), headers=headers, **kwargs)


def _shape(document: Any) -> Any:
    """A JSON document with every value replaced by its type name (keys kept, in order)."""
    if isinstance(document, dict):
        return [(key, _shape(value)) for key, value in document.items()]
    if isinstance(document, list):
        return [_shape(value) for value in document]
    return type(document).__name__


def test_the_fast_door_and_fastapis_route_answer_the_same_document(
    client: TestClient, doors: list[str]
) -> None:
    ready_program(client)
    fast = _post(client)
    routed = _post(client, "/programs/qa/executions?wait=true")
    assert doors == ["fast", "fast", "fastapi"]  # the second went on to FastAPI's route
    assert fast.status_code == routed.status_code == 200
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert _shape(fast.json()) == _shape(routed.json())
    assert fast.json()["status"] == "completed"
    assert fast.json()["outputs"] == routed.json()["outputs"]
    detail = client.get(f"/executions/{fast.json()['execution_id']}").json()
    assert detail["inputs"] == {"question": "q?"}


def test_the_fast_door_answers_a_reader_and_an_admin(client: TestClient, doors: list[str]) -> None:
    ready_program(client)
    doors.clear()
    for headers in (READ, ADMIN):
        assert _post(client, headers=headers).json()["status"] == "completed"
    assert doors == ["fast", "fast"]


def test_a_failed_execution_through_the_fast_door_is_200_with_its_error(
    client: TestClient,
) -> None:
    ready_program(client)
    body = json.dumps({"inputs": {"question": "q?"}, "backend": "broken"}).encode()
    response = _post(client, content=body)
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"]


def test_errors_of_the_run_come_through_the_fast_door_as_error_documents(
    client: TestClient, doors: list[str]
) -> None:
    response = _post(client, "/programs/nope/executions")
    assert doors == ["fast"]
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"headers": {"Authorization": "Bearer wrong"}}, 401, "unauthorized"),
        ({"headers": {"Authorization": "Basic abc"}}, 401, "unauthorized"),
        ({"headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"{not json"}, 422, "validation_error"),
        ({"content": b'{"inputs": {}, "version": "1"}'}, 422, "validation_error"),
        ({"content": b""}, 422, "validation_error"),
        ({"content": b'{"inputs": {"question": "q?"}}', "params": {"wait": "maybe"}}, 422, None),
    ],
)
def test_requests_the_fast_door_declines_are_answered_by_fastapis_route(
    client: TestClient,
    doors: list[str],
    kwargs: dict[str, Any],
    status: int,
    code: str | None,
) -> None:
    ready_program(client)
    doors.clear()
    response = _post(client, **kwargs)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code
    assert doors == ["fast", "fastapi"]


def test_a_declined_request_reaches_fastapis_route_with_its_body(
    client: TestClient, doors: list[str]
) -> None:
    ready_program(client)
    doors.clear()
    response = _post(client, "/programs/qa/executions?wait=false")
    assert response.status_code == 202
    assert doors == ["fast", "fastapi"]


def _request(headers: dict[str, str], query: bytes = b"") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "headers": raw, "query_string": query})


def test_the_body_is_taken_only_as_fastapi_would_pass_it_to_the_endpoint(
    client: TestClient,
) -> None:
    state = state_of(client)
    json_read = {"Content-Type": "application/json; charset=utf-8", **READ}
    taken = _request_body(state, _request(json_read), BODY)
    assert taken is not None
    assert taken.inputs == {"question": "q?"}
    assert _request_body(state, _request(json_read, b"wait=true"), BODY) is None
    assert _request_body(state, _request({**json_read, "Authorization": ""}), BODY) is None
    assert _request_body(state, _request(json_read), b"") is None
    assert _request_body(state, _request(json_read), b"\xff") is None
    assert _request_body(state, _request(json_read), b"[" * 100_000) is None
    assert _request_body(state, _request(json_read), b'{"inputs": {}, "x": 1}') is None


def test_other_methods_on_the_path_are_405_allowing_post(client: TestClient) -> None:
    response = client.get("/programs/qa/executions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_the_route_is_documented_once(client: TestClient) -> None:
    operations = client.get("/openapi.json").json()["paths"]["/programs/{name}/executions"]
    assert list(operations) == ["post"]
    assert "ExecuteRequest" in json.dumps(operations["post"]["requestBody"])

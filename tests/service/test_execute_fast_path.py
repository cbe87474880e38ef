"""``POST /programs/{name}/executions`` has its own door in front of FastAPI's route: it answers
the requests FastAPI would pass to the endpoint, and hands every other request, body included,
to FastAPI's route, so both answer with one contract."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from tests.service._support import ADMIN, READ, ready_program, service, state_of

from dspex.service.routes import executions
from dspex.service.routes.executions import ExecuteFastPath, _request_body

BODY = b'{"inputs": {"question": "q?"}}'


def _watch_doors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which door each execute request comes through from now: ``fast``, or ``fastapi`` when
    the app got it (after the fast door, when it handed it on)."""
    seen: list[str] = []
    fast_call = ExecuteFastPath.__call__

    async def through_fast(
        self: ExecuteFastPath, scope: Any, receive: Any, send: Any, app: Any
    ) -> None:
        executes = scope["type"] == "http" and scope["path"].endswith("/executions")

        async def through_fastapi(scope: Any, receive: Any, send: Any) -> None:
            if executes:
                seen.append("fastapi")
            await app(scope, receive, send)

        async def fast_answer(scope: Any, receive: Any, send: Any) -> None:
            seen.append("fast")
            await answer(scope, receive, send)

        answer = self._guarded
        self._guarded = fast_answer  # type: ignore[assignment]
        try:
            await fast_call(self, scope, receive, send, through_fastapi)
        finally:
            self._guarded = answer

    monkeypatch.setattr(ExecuteFastPath, "__call__", through_fast)
    return seen


@pytest.fixture
def doors(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return _watch_doors(monkeypatch)


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
    assert doors == ["fast", "fastapi"]  # the second went on to FastAPI's route
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
    assert doors == ["fastapi"]


def test_a_declined_request_reaches_fastapis_route_with_its_body(
    client: TestClient, doors: list[str]
) -> None:
    ready_program(client)
    doors.clear()
    response = _post(client, "/programs/qa/executions?wait=false")
    assert response.status_code == 202
    assert doors == ["fastapi"]


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


def test_a_body_over_the_limit_goes_to_the_app_which_answers_413(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service(workdir, max_body_bytes=4096) as small:
        seen = _watch_doors(monkeypatch)
        ready_program(small)
        seen.clear()
        big = json.dumps({"inputs": {"question": "q" * 5000}}).encode()
        response = _post(small, content=big)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert seen == ["fastapi"]  # refused before the door read anything
        assert _post(small).json()["status"] == "completed"
        assert seen == ["fastapi", "fast"]


def test_a_body_of_undeclared_length_goes_to_the_app(client: TestClient, doors: list[str]) -> None:
    ready_program(client)
    doors.clear()
    chunks = iter([BODY[:10], BODY[10:]])
    response = client.post(
        "/programs/qa/executions", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert doors == ["fastapi"]


def test_without_keys_the_loopback_guard_still_refuses_through_the_app(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with service(workdir, keys=[], headers={}) as keyless:
        seen = _watch_doors(monkeypatch)
        ready_program(keyless)
        seen.clear()
        foreign = _post(keyless, headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert foreign.json()["error"]["code"] == "origin_not_allowed"
        rebound = _post(keyless, headers={"Host": "evil.example"})
        assert rebound.status_code == 400
        assert rebound.json()["error"]["code"] == "host_not_allowed"
        assert seen == ["fastapi", "fastapi"]
        assert _post(keyless).json()["status"] == "completed"
        assert seen[-1] == "fast"


def test_an_unexpected_error_in_the_fast_door_is_a_500_document(
    client: TestClient, doors: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ready_program(client)
    doors.clear()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(executions, "run_execution", broken)
    response = _post(client)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "boom" not in response.text
    assert doors == ["fast"]

"""``POST /programs/{name}/executions?stream=true``: Server-Sent Events from the loopback LM
server's streamed chunks, and a client that disconnects mid-stream loses nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service._support import (
    ADMIN,
    ADMIN_KEY,
    KEYS,
    LOOPBACK,
    QA,
    error_code,
    ready_program,
    service,
    sse_events,
)
from tests.support.openai_server import (
    OpenAIServer,
    chat_adapter_content,
    requested_output_fields,
)

from dspex.backends.mock import MockBackend
from dspex.service import create_app

ANSWER = "The capital of France is Paris, on the Seine."


def _respond(request: dict[str, Any]) -> str:
    return chat_adapter_content({name: ANSWER for name, _ in requested_output_fields(request)})


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(_respond) as running:
        yield running


@contextmanager
def _service(workdir: Path, server: OpenAIServer) -> Iterator[TestClient]:
    """The app over ``workdir`` with an ``openai`` backend on the loopback server, built (and
    closed) by the service's runtime from ``dspex.toml``."""
    config = workdir / "dspex.toml"
    config.write_text(
        f'[backends.default]\nkind = "openai"\nbase_url = "{server.base_url}"\n'
        'model = "loopback-model"\n'
    )
    app = create_app(
        f"sqlite:///{workdir / 'dspex.db'}",
        config=config,
        cwd=workdir,
        api_keys=KEYS,
        worker_id="service-test",
    )
    with TestClient(app, base_url=LOOPBACK, headers=ADMIN) as client:
        yield client


@pytest.fixture
def streaming(workdir: Path, server: OpenAIServer) -> Iterator[TestClient]:
    with _service(workdir, server) as client:
        ready_program(client)
        yield client


def test_a_streamed_execution_answers_with_server_sent_events(streaming: TestClient) -> None:
    response = streaming.post(
        "/programs/qa/executions?stream=true", json={"inputs": {"question": "Capital?"}}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    blocks = response.text.strip().split("\n\n")
    assert blocks[0].splitlines()[:2] == ["id: 1", "event: started"]
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[:2] == ["started", "step_started"]
    assert names[-2:] == ["step_finished", "done"]
    tokens = [data for name, data in events if name == "token"]
    assert len(tokens) > 2
    assert {(t["module"], t["field"]) for t in tokens} == {("answer", "answer")}
    assert "".join(t["text"] for t in tokens) == ANSWER
    assert events[1][1] == {"module": "answer", "kind": "predict"}


def test_the_done_event_is_the_record_a_plain_post_answers_with(streaming: TestClient) -> None:
    streamed = streaming.post(
        "/programs/qa/executions?stream=true", json={"inputs": {"question": "Capital?"}}
    )
    plain = streaming.post("/programs/qa/executions", json={"inputs": {"question": "Capital?"}})
    events = sse_events(streamed.text)
    started, done = events[0][1], events[-1][1]
    assert done["execution_id"] == started["execution_id"]
    assert set(done) == set(plain.json())
    assert done["status"] == "completed"
    assert done["outputs"] == {"answer": ANSWER} == plain.json()["outputs"]
    recorded = streaming.get(f"/executions/{done['execution_id']}").json()
    assert recorded["status"] == "completed"
    assert recorded["outputs"] == done["outputs"]


def test_errors_before_the_execution_is_recorded_are_plain_json(streaming: TestClient) -> None:
    missing = streaming.post(
        "/programs/nope/executions?stream=true", json={"inputs": {"question": "?"}}
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/json")
    bad = streaming.post("/programs/qa/executions?stream=true", json={"inputs": {"question": 3}})
    assert bad.status_code == 422
    both = streaming.post(
        "/programs/qa/executions?stream=true&wait=false", json={"inputs": {"question": "?"}}
    )
    assert both.status_code == 422
    assert error_code(both) == "validation_error"
    assert streaming.get("/executions").json()["items"] == []


def test_a_module_failure_streams_a_failed_step_and_a_failed_record(workdir: Path) -> None:
    backends = {"default": MockBackend("default", permanent_failure_rate=1.0)}
    with service(workdir, backends=backends) as client:
        ready_program(client, QA)
        response = client.post(
            "/programs/qa/executions?stream=true", json={"inputs": {"question": "?"}}
        )
    events = sse_events(response.text)
    assert [name for name, _ in events] == ["started", "step_started", "step_finished", "done"]
    assert events[2][1]["status"] == "failed"
    assert events[2][1]["error_code"]
    assert events[3][1]["status"] == "failed"


async def _post_then_disconnect(app: Any, path: str, body: dict[str, Any]) -> list[bytes]:
    """POST ``body`` to ``path`` as an ASGI client that disconnects once the first token
    arrived; the bodies the app sent until then."""
    received_token = asyncio.Event()
    asked = False
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": json.dumps(body).encode()}
        await received_token.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            bodies.append(message["body"])
            if b"event: token" in message["body"]:
                received_token.set()

    route, _, query = path.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return bodies


def test_a_client_that_disconnects_mid_stream_still_gets_a_complete_record(
    workdir: Path, server: OpenAIServer
) -> None:
    server.chunk_delay = 0.05  # the answer takes a while: the client leaves in the middle
    with _service(workdir, server) as client:
        ready_program(client)
        portal = client.portal
        assert portal is not None
        bodies = portal.call(
            _post_then_disconnect,
            client.app,
            "/programs/qa/executions?stream=true",
            {"inputs": {"question": "Capital?"}},
        )
        sent = b"".join(bodies).decode()
        assert "event: token" in sent
        assert "event: done" not in sent  # the client was gone before the end
        execution_id = sse_events(sent)[0][1]["execution_id"]
    # the service's shutdown waits for the execution its client left
    with _service(workdir, server) as client:
        recorded = client.get(f"/executions/{execution_id}").json()
    assert recorded["status"] == "completed"
    assert recorded["outputs"] == {"answer": ANSWER}
    assert [step["status"] for step in recorded["steps"]] == ["completed"]

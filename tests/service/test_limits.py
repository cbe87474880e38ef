"""Request limits: bodies larger than ``max_body_bytes`` and batches larger than
``max_batch_items`` are refused with 413."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient
from tests.service._support import error_code, ready_program, service


def test_a_declared_body_over_the_limit_is_413(workdir: Path) -> None:
    with service(workdir, max_body_bytes=100) as client:
        response = client.post("/programs", content=b"x" * 101)
        assert response.status_code == 413
        assert error_code(response) == "payload_too_large"


def test_a_streamed_body_over_the_limit_is_413(workdir: Path) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b'{"question": "0123456789"}\n'

    with service(workdir, max_body_bytes=200) as client:
        ready_program(client)
        response = client.post(
            "/programs/qa/batches",
            content=chunks(),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert response.status_code == 413


def test_a_json_batch_over_the_item_limit_is_413(workdir: Path) -> None:
    with service(workdir, max_batch_items=3) as client:
        ready_program(client)
        response = client.post("/programs/qa/batches", json=[{"question": "q?"}] * 4)
        assert response.status_code == 413


def test_a_jsonl_batch_over_the_item_limit_is_413(workdir: Path) -> None:
    with service(workdir, max_batch_items=3) as client:
        ready_program(client)
        body = "".join(json.dumps({"question": "q?"}) + "\n" for _ in range(4))
        response = client.post(
            "/programs/qa/batches", content=body, headers={"Content-Type": "application/x-ndjson"}
        )
        assert response.status_code == 413


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/nowhere")
    assert response.status_code == 404
    assert error_code(response) == "not_found"

"""Helpers for the service tests: the app over a temporary SQLite database, keys, programs."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from dspex.backends.base import Backend
from dspex.backends.mock import MockBackend
from dspex.service import create_app, hash_key
from dspex.service.state import ServiceState

ADMIN_KEY = "admin-key-for-tests-0123456789"
READ_KEY = "read-key-for-tests-9876543210"
KEYS = [
    {"hash": hash_key(ADMIN_KEY), "scope": "admin", "name": "ops"},
    {"hash": hash_key(READ_KEY), "scope": "read", "name": "viewer"},
]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LOOPBACK = "http://127.0.0.1:8000"
READ = {"Authorization": f"Bearer {READ_KEY}"}

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def default_backends() -> dict[str, Backend]:
    return {
        "default": MockBackend("default"),
        "slow": MockBackend("slow", latency_ms=60_000.0),
        "broken": MockBackend("broken", permanent_failure_rate=1.0),
    }


@contextmanager
def service(
    workdir: Path,
    *,
    keys: list[dict[str, str]] | None = KEYS,
    backends: Mapping[str, Backend] | None = None,
    headers: Mapping[str, str] | None = ADMIN,
    **options: Any,
) -> Iterator[TestClient]:
    """A started app over ``workdir/dspex.db`` (keys: admin + read unless given)."""
    app = create_app(
        f"sqlite:///{workdir / 'dspex.db'}",
        cwd=workdir,
        backends=default_backends() if backends is None else backends,
        api_keys=keys,
        worker_id="service-test",
        **options,
    )
    # a loopback address: without keys the app answers only requests addressed to this machine
    with TestClient(app, base_url=LOOPBACK, headers=dict(headers or {})) as client:
        yield client


def state_of(client: TestClient) -> ServiceState:
    state: ServiceState = client.app.state.dspex  # type: ignore[attr-defined]
    return state


def drain(client: TestClient) -> None:
    """Wait until every background execution, batch and optimization of the app finished."""
    import asyncio

    async def wait() -> None:
        state = state_of(client)
        tasks = [*state.background, *(run.task for run in state.batches.running if run.task)]
        tasks += [run.task for run in state.optimizations.running if run.task]
        await asyncio.gather(*tasks, return_exceptions=True)

    client.portal.call(wait)  # type: ignore[union-attr]


def ready_program(client: TestClient, spec: Mapping[str, Any] = QA) -> str:
    response = client.post("/programs?initialize=true", json=dict(spec))
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "ready", response.json()
    return str(response.json()["name"])


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of a Server-Sent Events body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def error_code(response: Any) -> str:
    return str(response.json()["error"]["code"])

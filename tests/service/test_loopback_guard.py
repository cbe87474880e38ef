"""Without API keys the service is for this machine only: requests addressed to another host
name (DNS rebinding) are ``400``, state-changing requests from another origin ``403``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service._support import QA, error_code, ready_program, service

from dspex.service.middleware import is_loopback_host

EVIL = "https://evil.example"


@pytest.fixture
def keyless(workdir: Path) -> Iterator[TestClient]:
    """The app with no API key, reached at http://127.0.0.1:8000."""
    with service(workdir, keys=[], headers={}) as client:
        yield client


def _programs(client: TestClient) -> list[str]:
    return [p["name"] for p in client.get("/programs").json()["items"]]


def test_a_cross_site_text_post_registers_nothing(keyless: TestClient) -> None:
    # what a page on another site can send with a plain form or fetch without CORS
    response = keyless.post(
        "/programs?initialize=true",
        content=json.dumps(QA).encode(),
        headers={"Content-Type": "text/plain", "Origin": EVIL},
    )
    assert response.status_code == 403
    assert error_code(response) == "origin_not_allowed"
    assert _programs(keyless) == []


def test_a_foreign_origin_cannot_start_a_batch(keyless: TestClient) -> None:
    ready_program(keyless)
    response = keyless.post(
        "/programs/qa/batches", json=[{"question": "q?"}], headers={"Origin": EVIL}
    )
    assert response.status_code == 403
    assert keyless.get("/dashboard/batches").json()["items"] == []


@pytest.mark.parametrize(
    "origin", ["null", "http://localhost:8000", "http://127.0.0.1:9999", "https://127.0.0.1:8000"]
)
def test_any_origin_but_the_services_own_is_foreign(keyless: TestClient, origin: str) -> None:
    response = keyless.post("/programs", json=QA, headers={"Origin": origin})
    assert response.status_code == 403


def test_the_services_own_origin_may_post(keyless: TestClient) -> None:
    response = keyless.post("/programs", json=QA, headers={"Origin": "http://127.0.0.1:8000"})
    assert response.status_code == 201


def test_clients_that_send_no_origin_may_post(keyless: TestClient) -> None:
    assert keyless.post("/programs", json=QA).status_code == 201


def test_reads_are_not_refused_for_their_origin(keyless: TestClient) -> None:
    assert keyless.get("/programs", headers={"Origin": EVIL}).status_code == 200


@pytest.mark.parametrize("path", ["/programs", "/healthz", "/metrics", "/dashboard"])
def test_a_host_that_is_not_this_machine_is_refused(keyless: TestClient, path: str) -> None:
    response = keyless.get(path, headers={"Host": "rebound.evil.example:8000"})
    assert response.status_code == 400
    assert error_code(response) == "host_not_allowed"


def test_a_rebound_host_cannot_register_a_program(keyless: TestClient) -> None:
    response = keyless.post("/programs", json=QA, headers={"Host": "rebound.evil.example"})
    assert response.status_code == 400
    assert _programs(keyless) == []


@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.2"])
def test_every_loopback_name_is_this_machine(keyless: TestClient, host: str) -> None:
    assert keyless.get("/programs", headers={"Host": host}).status_code == 200


def test_with_api_keys_any_host_and_origin_may_call(client: TestClient) -> None:
    # keyed services listen on public addresses behind any name; a page elsewhere cannot
    # send the bearer key, so its origin does not matter
    response = client.post(
        "/programs", json=QA, headers={"Host": "dspex.example.com", "Origin": EVIL}
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("value", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("localhost.:80", True),
        ("[::1]", True),
        ("[::1]:8000", True),
        ("", False),
        ("0.0.0.0:8000", False),
        ("10.0.0.1", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("[::1", False),
        ("localhost:80x", False),
    ],
)
def test_is_loopback_host(value: str, loopback: bool) -> None:
    assert is_loopback_host(value) is loopback

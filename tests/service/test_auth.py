"""API keys: bearer tokens checked against configured hashes, with read and admin scopes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.service._support import QA, READ, error_code, ready_program, service

from dspex.service.auth import KeyRing, hash_key


def test_missing_key_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    response = client.get("/programs", headers={"Authorization": ""})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert error_code(response) == "unauthorized"


def test_wrong_key_is_401(client: TestClient) -> None:
    response = client.get("/programs", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_read_key_reads(client: TestClient) -> None:
    assert client.get("/programs", headers=READ).status_code == 200


def test_read_key_cannot_register_programs(client: TestClient) -> None:
    response = client.post("/programs", json=QA, headers=READ)
    assert response.status_code == 403
    assert error_code(response) == "forbidden"


def test_read_key_cannot_run_cleanup(client: TestClient) -> None:
    assert client.post("/maintenance/cleanup", headers=READ).status_code == 403


@pytest.mark.parametrize(
    ("headers", "content_type", "status"),
    [
        ({"Authorization": ""}, "text/plain", 401),  # the key is checked before the body's type
        ({"Authorization": "Bearer wrong"}, "text/plain", 401),
        (READ, "text/plain", 415),
        (READ, "application/json", 200),
    ],
)
def test_running_a_program_checks_the_key_then_the_media_type(
    client: TestClient, headers: dict[str, str], content_type: str, status: int
) -> None:
    name = ready_program(client)
    response = client.post(
        f"/programs/{name}/executions",
        content=b'{"inputs": {"question": "q?"}}',
        headers={**headers, "Content-Type": content_type},
    )
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["status"] == "completed"


def test_liveness_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz", headers={"Authorization": ""})
    assert response.json() == {"status": "ok"}


def test_without_configured_keys_every_request_is_allowed(workdir: Path) -> None:
    with service(workdir, keys=[], headers={}) as client:
        assert client.post("/programs", json=QA).status_code == 201


def test_key_ring_matches_the_key_with_its_scope() -> None:
    ring = KeyRing(
        [{"hash": hash_key("a"), "scope": "read"}, {"hash": hash_key("b"), "scope": "admin"}]
    )
    found = ring.authenticate("b")
    assert found is not None
    assert found.scope == "admin"
    assert found.allows("read")
    assert ring.authenticate("c") is None


def test_key_ring_compares_every_configured_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    calls: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    ring = KeyRing([{"hash": hash_key(k), "scope": "read"} for k in ("a", "b", "c")])
    ring.authenticate("a")
    assert len(calls) == 3


def test_hash_key_is_the_sha256_config_form() -> None:
    assert hash_key("abc") == (
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )

"""Traces over HTTP: an execution's result and its detail carry each step's recorded inputs and
outputs, sensitive fields as "[redacted]"; the execution's own inputs stay as given."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from tests.service._support import ready_program

FIELDS: dict[str, Any] = {
    "inputs": {"question": "str", "ssn": {"type": "str", "sensitive": True}},
    "outputs": {"answer": "str"},
}
LOOKUP: dict[str, Any] = {
    "name": "lookup",
    "signature": FIELDS,
    "modules": {"answer": {"kind": "predict", "signature": FIELDS}},
}


def test_an_execution_and_its_detail_carry_redacted_step_data(client: TestClient) -> None:
    ready_program(client, LOOKUP)
    response = client.post(
        "/programs/lookup/executions", json={"inputs": {"question": "who?", "ssn": "123-45-6789"}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    (step,) = body["steps"]
    assert step["inputs"] == {"question": "who?", "ssn": "[redacted]"}
    assert set(step["outputs"]) == {"answer"}

    detail = client.get(f"/executions/{body['execution_id']}")
    assert detail.status_code == 200
    data = detail.json()
    assert data["steps"][0]["inputs"] == step["inputs"]
    assert data["steps"][0]["outputs"] == step["outputs"]
    (attempt,) = data["attempt_records"]
    assert attempt["messages"] is None
    assert attempt["response"] is None
    assert data["inputs"] == {"question": "who?", "ssn": "123-45-6789"}


def test_a_signature_with_a_sensitive_field_validates_over_http(client: TestClient) -> None:
    body = {"signature": FIELDS, "level": "comprehensive"}
    response = client.post("/signatures/validate", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is True

"""Executions: run one (sync and ``202``), get, list with filters and cursor pagination."""

from __future__ import annotations

from fastapi.testclient import TestClient
from tests.service._support import QA, drain, error_code, ready_program


def test_run_returns_the_completed_result(client: TestClient) -> None:
    ready_program(client)
    response = client.post("/programs/qa/executions", json={"inputs": {"question": "why?"}})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed"
    assert set(body["outputs"]) == {"answer"}


def test_a_failed_execution_is_still_200_with_status_failed(client: TestClient) -> None:
    ready_program(client)
    response = client.post(
        "/programs/qa/executions", json={"inputs": {"question": "why?"}, "backend": "broken"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"]["code"]


def test_run_of_a_draft_program_is_409(client: TestClient) -> None:
    client.post("/programs", json=QA)
    response = client.post("/programs/qa/executions", json={"inputs": {"question": "why?"}})
    assert response.status_code == 409
    assert error_code(response) == "program_state"


def test_run_of_unknown_program_is_404(client: TestClient) -> None:
    response = client.post("/programs/nope/executions", json={"inputs": {"question": "why?"}})
    assert response.status_code == 404


def test_run_with_bad_inputs_is_422_naming_each_field(client: TestClient) -> None:
    ready_program(client)
    response = client.post("/programs/qa/executions", json={"inputs": {"question": 3}})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["error"]["errors"]] == ["question"]


def test_run_with_unknown_backend_is_400(client: TestClient) -> None:
    ready_program(client)
    response = client.post(
        "/programs/qa/executions", json={"inputs": {"question": "q?"}, "backend": "nope"}
    )
    assert response.status_code == 400
    assert error_code(response) == "config_invalid"


def test_run_with_unknown_body_field_is_422(client: TestClient) -> None:
    ready_program(client)
    response = client.post("/programs/qa/executions", json={"inputs": {}, "extra": 1})
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


def test_wait_false_answers_202_then_the_execution_completes(client: TestClient) -> None:
    ready_program(client)
    response = client.post(
        "/programs/qa/executions?wait=false", json={"inputs": {"question": "later?"}}
    )
    assert response.status_code == 202
    execution_id = response.json()["execution_id"]
    drain(client)
    detail = client.get(f"/executions/{execution_id}").json()
    assert detail["status"] == "completed"
    assert detail["inputs"] == {"question": "later?"}


def test_wait_false_still_reports_request_errors_synchronously(client: TestClient) -> None:
    response = client.post("/programs/nope/executions?wait=false", json={"inputs": {}})
    assert response.status_code == 404


def test_get_unknown_execution_is_404(client: TestClient) -> None:
    assert client.get("/executions/does-not-exist").status_code == 404


def test_list_executions_pages_through_every_execution_once(client: TestClient) -> None:
    ready_program(client)
    created = {
        client.post("/programs/qa/executions", json={"inputs": {"question": f"q{i}?"}}).json()[
            "execution_id"
        ]
        for i in range(5)
    }
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/executions", params=params).json()
        seen += [item["execution_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(created)
    assert pages == 3


def test_list_executions_filters_by_status(client: TestClient) -> None:
    ready_program(client)
    client.post("/programs/qa/executions", json={"inputs": {"question": "a?"}})
    client.post("/programs/qa/executions", json={"inputs": {"question": "b?"}, "backend": "broken"})
    items = client.get("/executions", params={"status": "failed", "program": "qa"}).json()["items"]
    assert [item["status"] for item in items] == ["failed"]


def test_list_executions_rejects_a_bad_cursor(client: TestClient) -> None:
    response = client.get("/executions", params={"cursor": "garbage"})
    assert response.status_code == 422

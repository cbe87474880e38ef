"""``/programs``: register (JSON and YAML), list, show, initialize, archive, graph."""

from __future__ import annotations

import sys

import yaml
from fastapi.testclient import TestClient
from tests.service._support import QA, error_code, ready_program


def test_register_json_spec_answers_201_with_a_draft(client: TestClient) -> None:
    response = client.post("/programs", json=QA)
    assert response.status_code == 201
    assert response.json()["name"] == "qa"
    assert response.json()["status"] == "draft"


def test_register_yaml_spec_is_accepted(client: TestClient) -> None:
    body = yaml.safe_dump(QA)
    response = client.post("/programs", content=body, headers={"Content-Type": "application/yaml"})
    assert response.status_code == 201
    assert response.json()["signature"] == "question: str -> answer: str"


def test_register_with_initialize_makes_the_program_ready(client: TestClient) -> None:
    assert ready_program(client) == "qa"


def test_register_refuses_a_body_that_is_not_an_object(client: TestClient) -> None:
    response = client.post("/programs", json="/etc/passwd")
    assert response.status_code == 400
    assert error_code(response) == "spec_invalid"


def test_register_reports_malformed_json_as_validation_error(client: TestClient) -> None:
    response = client.post(
        "/programs", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert error_code(response) == "validation_error"


def test_register_reports_malformed_yaml_as_a_malformed_spec(client: TestClient) -> None:
    response = client.post(
        "/programs", content=b"a: [1, 2", headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 400
    assert error_code(response) == "spec_invalid"
    assert response.json()["error"]["errors"][0]["code"] == "yaml_invalid"


def test_register_rejects_an_invalid_spec_with_400_and_field_errors(client: TestClient) -> None:
    response = client.post("/programs", json={"name": "x", "modules": {}})
    assert response.status_code == 400
    body = response.json()["error"]
    assert body["code"] in {"spec_invalid", "graph_invalid"}
    assert "Traceback" not in response.text


def test_list_programs_returns_every_registered_program(client: TestClient) -> None:
    ready_program(client)
    items = client.get("/programs").json()["items"]
    assert [p["name"] for p in items] == ["qa"]


def test_show_program_returns_spec_and_plan(client: TestClient) -> None:
    ready_program(client)
    body = client.get("/programs/qa").json()
    assert body["program"]["status"] == "ready"
    assert body["spec"]["name"] == "qa"
    assert "levels" in body["plan"]


def test_show_unknown_program_is_404(client: TestClient) -> None:
    response = client.get("/programs/missing")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_archive_moves_the_program_to_archived(client: TestClient) -> None:
    ready_program(client)
    response = client.post("/programs/qa/archive")
    assert response.status_code == 200
    assert response.json()["status"] == "archived"


def test_archive_twice_is_a_409_conflict(client: TestClient) -> None:
    ready_program(client)
    client.post("/programs/qa/archive")
    response = client.post("/programs/qa/archive")
    assert response.status_code == 409
    assert error_code(response) == "program_state"


def test_initialize_unknown_version_is_404(client: TestClient) -> None:
    client.post("/programs", json=QA)
    assert client.post("/programs/qa/initialize?version=7").status_code == 404


def test_graph_returns_plan_and_modules(client: TestClient) -> None:
    ready_program(client)
    body = client.get("/programs/qa/graph").json()
    assert [m["name"] for m in body["modules"]] == ["answer"]
    assert body["last_run"] is None


def test_python_module_outside_the_allow_list_is_rejected_and_never_imported(
    client: TestClient,
) -> None:
    forbidden = "tests.service._forbidden"
    spec = {
        "name": "evil",
        "signature": "question: str -> answer: str",
        "modules": {
            "run": {
                "kind": "python",
                "function": f"{forbidden}:answer",
                "signature": "question: str -> answer: str",
            }
        },
    }
    response = client.post("/programs?initialize=true", json=spec)
    assert response.status_code == 201
    assert response.json()["status"] == "error"
    assert response.json()["error"].startswith("import_not_allowed")
    assert forbidden not in sys.modules
    run = client.post("/programs/evil/executions", json={"inputs": {"question": "hi"}})
    assert run.status_code == 409
    assert forbidden not in sys.modules

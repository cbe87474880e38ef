"""Every input is bounded work: deep nesting, YAML aliases, version numbers and embedding sizes
are refused with a 4xx and a stable code, never a 500 or a runaway allocation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from tests.service._support import QA, READ, error_code, ready_program

NDJSON = {"Content-Type": "application/x-ndjson"}
YAML = {"Content-Type": "application/yaml"}


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _with_config(config: str) -> str:
    """The QA spec as JSON text with ``config`` (JSON text) on its module."""
    spec = json.loads(json.dumps(QA))
    spec["modules"]["answer"]["config"] = "CONFIG"
    return json.dumps(spec).replace('"CONFIG"', config)


def _programs(client: TestClient) -> list[str]:
    return [p["name"] for p in client.get("/programs").json()["items"]]


def _batches(client: TestClient) -> list[Any]:
    return list(client.get("/dashboard/batches").json()["items"])


# ---------------------------------------------------------------------------- nesting


def test_a_program_nested_past_the_json_parser_is_400(client: TestClient) -> None:
    response = client.post(
        "/programs", content=_with_config(deep(5000)), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_code(response) == "nesting_too_deep"
    assert _programs(client) == []


def test_a_program_nested_past_the_spec_limit_is_400(client: TestClient) -> None:
    response = client.post(
        "/programs", content=_with_config(deep(900)), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_code(response) == "spec_invalid"
    assert response.json()["error"]["errors"][0]["code"] == "too_deep"


def test_a_yaml_program_nested_thousands_deep_is_400(client: TestClient) -> None:
    text = yaml.safe_dump(QA) + "metadata:\n  x: " + deep(5000) + "\n"
    response = client.post("/programs", content=text, headers=YAML)
    assert response.status_code == 400
    assert response.json()["error"]["errors"][0]["code"] == "too_deep"


def test_a_yaml_program_with_aliases_is_refused_before_it_expands(client: TestClient) -> None:
    # 554 bytes of these once became a 33.6 MB stored spec
    lines = [yaml.safe_dump(QA) + "metadata:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 9):
        lines.append(f"  l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    response = client.post("/programs", content="\n".join(lines) + "\n", headers=YAML)
    assert response.status_code == 400
    assert error_code(response) == "spec_invalid"
    assert response.json()["error"]["errors"][0]["code"] == "yaml_alias"
    assert _programs(client) == []


def test_a_batch_nested_past_the_json_parser_is_400(client: TestClient) -> None:
    ready_program(client)
    body = '[{"question": ' + deep(5000) + "}]"
    response = client.post(
        "/programs/qa/batches", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_code(response) == "nesting_too_deep"
    assert _batches(client) == []


def test_a_batch_item_nested_past_the_item_limit_is_400(client: TestClient) -> None:
    ready_program(client)
    items = [{"question": "q?"}, {"question": json.loads(deep(100))}]
    response = client.post("/programs/qa/batches", json=items)
    assert response.status_code == 400
    assert error_code(response) == "nesting_too_deep"


@pytest.mark.parametrize("levels", [100, 5000])
def test_a_json_line_nested_too_deep_is_400_naming_its_line(
    client: TestClient, levels: int
) -> None:
    ready_program(client)
    body = '{"question": "q?"}\n' * 2 + '{"question": ' + deep(levels) + "}\n"
    response = client.post("/programs/qa/batches", content=body, headers=NDJSON)
    assert response.status_code == 400
    assert error_code(response) == "nesting_too_deep"
    assert "line 3" in response.json()["error"]["message"]
    assert _batches(client) == []


def test_a_deep_json_line_split_across_chunks_is_found(client: TestClient) -> None:
    ready_program(client)
    line = ('{"question": ' + deep(3000) + "}\n").encode()

    def chunks() -> Iterator[bytes]:
        yield b'{"question": "q?"}\n{"quest'
        for start in range(6, len(line), 1000):
            yield line[start : start + 1000]

    response = client.post("/programs/qa/batches", content=chunks(), headers=NDJSON)
    assert response.status_code == 400
    assert "line 2" in response.json()["error"]["message"]


def test_json_lines_with_many_brackets_but_shallow_nesting_run(client: TestClient) -> None:
    spec = {
        "name": "tags",
        "signature": "tags: list[list[str]] -> answer: str",
        "modules": {
            "answer": {"kind": "predict", "signature": "tags: list[list[str]] -> answer: str"}
        },
    }
    ready_program(client, spec)
    line = json.dumps({"tags": [["a"], ["b"]] * 100}) + "\n"  # 401 brackets, three levels
    response = client.post("/programs/tags/batches", content=line * 3, headers=NDJSON)
    assert response.status_code == 202, response.text


# ---------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["0", "2147483648", "99999999999999999999"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/programs/qa"),
        ("GET", "/programs/qa/graph"),
        ("POST", "/programs/qa/initialize"),
        ("POST", "/programs/qa/archive"),
    ],
)
def test_a_version_out_of_range_in_the_query_is_422(
    client: TestClient, method: str, path: str, version: str
) -> None:
    ready_program(client)
    response = client.request(method, f"{path}?version={version}")
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert client.get("/programs/qa").json()["program"]["status"] == "ready"


@pytest.mark.parametrize("version", [0, 2**31, 2**63, 10**30])
def test_a_version_out_of_range_in_an_execution_is_422(client: TestClient, version: int) -> None:
    ready_program(client)
    response = client.post(
        "/programs/qa/executions", json={"inputs": {"question": "q?"}, "version": version}
    )
    assert response.status_code == 422
    assert client.get("/executions").json()["items"] == []


def test_the_largest_version_is_looked_up(client: TestClient) -> None:
    ready_program(client)
    assert client.get("/programs/qa?version=2147483647").status_code == 404


# ---------------------------------------------------------------------------- signatures


def test_a_huge_embedding_is_invalid_for_a_read_key_at_the_deep_level(client: TestClient) -> None:
    response = client.post(
        "/signatures/validate",
        json={"signature": "question: str -> vector: embedding[100000000]", "level": "deep"},
        headers=READ,
    )
    assert response.status_code == 200
    assert response.json()["valid"] is False
    assert "65536" in response.json()["problems"][0]["message"]


def test_a_type_nested_thousands_deep_is_invalid_not_a_crash(client: TestClient) -> None:
    signature = "question: " + "list[" * 3000 + "str" + "]" * 3000 + " -> answer: str"
    response = client.post("/signatures/validate", json={"signature": signature}, headers=READ)
    assert response.status_code == 200
    assert response.json()["problems"][0]["code"] == "too_deep"

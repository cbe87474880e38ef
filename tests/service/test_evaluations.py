"""Evaluations over HTTP (a background job, its score listed) and promotions (admin scope)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service._support import READ, drain, error_code, service, sse_events

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend

TABLE = {"capital of France": "Paris", "2 + 2": "4"}
DEVSET = [{"question": q, "answer": a} for q, a in TABLE.items()]


def answer(request: PredictRequest) -> dict[str, Any]:
    good = request.config.get("temperature") == 0
    return {"answer": TABLE[request.inputs["question"]] if good else "wrong"}


def spec(temperature: float) -> dict[str, Any]:
    return {
        "name": "qa",
        "signature": "question: str -> answer: str",
        "modules": {
            "answer": {
                "kind": "predict",
                "signature": "question: str -> answer: str",
                "config": {"temperature": temperature},
            }
        },
    }


@pytest.fixture
def client(workdir: Path) -> Iterator[TestClient]:
    with service(workdir, backends={"default": MockBackend("default", handler=answer)}) as c:
        for temperature in (0.7, 0.0):  # v1 answers badly, v2 well
            response = c.post("/programs?initialize=true", json=spec(temperature))
            assert response.status_code == 201, response.text
        yield c


def test_an_evaluation_runs_in_the_background_and_its_score_is_listed(
    client: TestClient,
) -> None:
    response = client.post(
        "/programs/qa/evaluations?metric=exact_match&version=2", json=DEVSET, headers=READ
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["program"], accepted["metric"], accepted["status"]) == (
        "qa",
        "exact_match",
        "running",
    )
    events = sse_events(client.get(f"/batches/{accepted['batch_id']}/events").text)
    assert [name for name, _ in events] == ["progress", "progress", "done"]
    assert events[1][1]["done"] == events[1][1]["total"] == 2
    done = events[-1][1]
    assert (done["batch_id"], done["status"]) == (accepted["batch_id"], "completed")
    assert (done["evaluation"]["score"], done["evaluation"]["n"]) == (1.0, 2)
    assert done["stats"]["total"] == 2
    status = client.get(f"/batches/{accepted['batch_id']}").json()
    assert (status["status"], status["stats"]["total"]) == ("completed", 2)
    (item,) = client.get("/programs/qa/evaluations", headers=READ).json()["items"]
    assert (item["version"], item["score"], item["n"], item["failed"]) == (2, 1.0, 2, 0)
    assert item["batch_id"] == accepted["batch_id"]
    assert client.get("/programs/qa/evaluations?version=1").json()["items"] == []


def test_a_devset_can_be_sent_as_json_lines(client: TestClient) -> None:
    body = "".join(json.dumps(row) + "\n" for row in DEVSET)
    response = client.post(
        "/programs/qa/evaluations?metric=f1&version=1",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 202, response.text
    drain(client)
    (item,) = client.get("/programs/qa/evaluations").json()["items"]
    assert (item["metric"], item["score"]) == ("f1", 0.0)


def test_a_bad_metric_or_devset_is_refused_before_anything_runs(client: TestClient) -> None:
    bad_metric = client.post("/programs/qa/evaluations?metric=accuracy", json=DEVSET)
    assert bad_metric.status_code == 422
    assert error_code(bad_metric) == "metric_invalid"
    bad_rows = client.post("/programs/qa/evaluations?metric=f1", json=[{"question": "2 + 2"}])
    assert bad_rows.status_code == 422
    assert bad_rows.json()["error"]["errors"][0]["code"] == "no_label"
    assert client.get("/programs/qa/evaluations").json()["items"] == []


def test_promotion_needs_the_admin_scope(client: TestClient) -> None:
    response = client.post("/programs/qa/promote", json={"version": 2, "force": True}, headers=READ)
    assert response.status_code == 403
    assert client.get("/programs/qa/promotions").json()["items"] == []


def test_the_gate_promotes_a_better_version_and_refuses_a_worse_one(client: TestClient) -> None:
    body = {"version": 2, "metric": "exact_match", "devset": DEVSET}
    promoted = client.post("/programs/qa/promote", json=body)
    assert promoted.status_code == 200, promoted.text
    data = promoted.json()
    assert (data["version"], data["score"], data["previous_score"]) == (2, 1.0, 0.0)
    assert data["promoted_by"] == "api:ops"
    refused = client.post("/programs/qa/promote", json={**body, "version": 1})
    assert refused.status_code == 409
    assert error_code(refused) == "promotion_refused"
    assert "below v2's 1.0000" in refused.json()["error"]["message"]
    (only,) = client.get("/programs/qa/promotions", headers=READ).json()["items"]
    assert only["version"] == 2
    listed = client.get("/programs?all_versions=true").json()["items"]
    assert [(p["version"], p["current"]) for p in listed] == [(1, False), (2, True)]

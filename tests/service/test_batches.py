"""Batches: submit (JSON and JSONL), events, results in input order, status, cancel, resume."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from tests.service._support import QA, error_code, ready_program, sse_events

ITEMS = [{"question": f"question {i}?"} for i in range(6)]


def _submit(client: TestClient, items: object = ITEMS, query: str = "") -> str:
    response = client.post(f"/programs/qa/batches{query}", json=items)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    return str(response.json()["batch_id"])


def _events(client: TestClient, batch_id: str) -> list[tuple[str, dict[str, object]]]:
    response = client.get(f"/batches/{batch_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return sse_events(response.text)


def test_batch_events_report_every_item_then_done(client: TestClient) -> None:
    ready_program(client)
    batch_id = _submit(client)
    events = _events(client, batch_id)
    progress = [data for name, data in events if name == "progress"]
    assert sorted(int(str(e["index"])) for e in progress) == list(range(6))
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == "completed"
    assert progress[-1]["done"] == 6


def test_batch_results_are_jsonl_in_input_order(client: TestClient) -> None:
    ready_program(client)
    batch_id = _submit(client)
    _events(client, batch_id)
    response = client.get(f"/batches/{batch_id}/results")
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [line["index"] for line in lines] == list(range(6))
    third = client.get(f"/executions/{lines[3]['execution_id']}").json()
    assert third["inputs"] == ITEMS[3]


def test_batch_status_has_counts_and_statistics_once_done(client: TestClient) -> None:
    ready_program(client)
    batch_id = _submit(client)
    _events(client, batch_id)
    body = client.get(f"/batches/{batch_id}").json()
    assert body["status"] == "completed"
    assert body["counts"]["completed"] == 6
    assert body["stats"]["total"] == 6
    assert body["running_here"] is False


def test_jsonl_upload_runs_every_line(client: TestClient) -> None:
    ready_program(client)
    body = "\n".join(json.dumps(item) for item in ITEMS)  # no final newline
    response = client.post(
        "/programs/qa/batches", content=body, headers={"Content-Type": "application/x-ndjson"}
    )
    assert response.status_code == 202
    batch_id = response.json()["batch_id"]
    assert _events(client, batch_id)[-1][1]["status"] == "completed"
    assert client.get(f"/batches/{batch_id}").json()["counts"]["total"] == 6


def test_bad_items_are_all_reported_before_anything_runs(client: TestClient) -> None:
    ready_program(client)
    response = client.post("/programs/qa/batches", json=[{"question": "ok?"}, {"q": 1}, 5])
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["error"]["errors"]] == ["items.2"]
    response = client.post("/programs/qa/batches", json=[{"question": "ok?"}, {"question": 1}])
    assert response.status_code == 422


def test_bad_batch_options_are_all_named_with_the_librarys_bounds(client: TestClient) -> None:
    ready_program(client)
    response = client.post(
        "/programs/qa/batches?max_concurrency=0&max_retries=101&item_timeout=-1",
        json=[{"question": "ok?"}],
    )
    assert response.status_code == 422
    errors = response.json()["error"]["errors"]
    assert sorted(e["field"] for e in errors) == ["item_timeout", "max_concurrency", "max_retries"]


def test_batch_body_must_be_an_array(client: TestClient) -> None:
    ready_program(client)
    response = client.post("/programs/qa/batches", json={"question": "x"})
    assert response.status_code == 422
    assert response.json()["error"]["errors"][0]["code"] == "not_an_array"


def test_batch_of_a_program_that_is_not_ready_is_409(client: TestClient) -> None:
    client.post("/programs", json=QA)
    response = client.post("/programs/qa/batches", json=ITEMS)
    assert response.status_code == 409


def test_cancel_stops_a_running_batch_and_resume_finishes_it(client: TestClient) -> None:
    ready_program(client)
    batch_id = _submit(client, query="?backend=slow&max_concurrency=2")
    response = client.post(f"/batches/{batch_id}/cancel")
    assert response.status_code == 202
    assert response.json() == {"batch_id": batch_id, "status": "cancelling"}
    done = _events(client, batch_id)[-1]
    assert done[1]["status"] == "cancelled"
    assert client.get(f"/batches/{batch_id}").json()["status"] == "cancelled"
    response = client.post(f"/batches/{batch_id}/resume", json=ITEMS)
    assert response.status_code == 202
    assert response.json()["batch_id"] == batch_id
    assert _events(client, batch_id)[-1][1]["status"] == "completed"
    assert client.get(f"/batches/{batch_id}").json()["counts"]["completed"] == 6


def test_cancel_of_a_finished_batch_is_409(client: TestClient) -> None:
    ready_program(client)
    batch_id = _submit(client)
    _events(client, batch_id)
    response = client.post(f"/batches/{batch_id}/cancel")
    assert response.status_code == 409
    assert error_code(response) == "batch_error"


def test_resume_of_a_running_batch_is_409(client: TestClient) -> None:
    ready_program(client)
    batch_id = _submit(client, query="?backend=slow")
    response = client.post(f"/batches/{batch_id}/resume", json=ITEMS)
    assert response.status_code == 409
    client.post(f"/batches/{batch_id}/cancel")


def test_unknown_batch_is_404_on_every_route(client: TestClient) -> None:
    for path in ("", "/events", "/results"):
        assert client.get(f"/batches/nope{path}").status_code == 404
    assert client.post("/batches/nope/cancel").status_code == 404
    assert client.post("/batches/nope/resume", json=ITEMS).status_code == 404


def test_too_many_running_batches_is_429(workdir: object) -> None:
    from pathlib import Path

    from tests.service._support import service

    assert isinstance(workdir, Path)
    with service(workdir, max_running_batches=1) as client:
        ready_program(client)
        first = _submit(client, query="?backend=slow")
        response = client.post("/programs/qa/batches?backend=slow", json=ITEMS)
        assert response.status_code == 429
        assert error_code(response) == "rate_limited"
        client.post(f"/batches/{first}/cancel")


def test_events_of_a_batch_run_by_another_process_end_with_its_status(workdir: object) -> None:
    from pathlib import Path

    from tests.service._support import service

    assert isinstance(workdir, Path)
    with service(workdir) as client:
        ready_program(client)
        batch_id = _submit(client)
        _events(client, batch_id)
    with service(workdir) as client:
        events = _events(client, batch_id)
        assert events == [
            ("done", {"batch_id": batch_id, "status": "completed", "stats": None, "error": None})
        ]

"""Optimization runs over HTTP: started in the background (admin), followed as Server-Sent
Events, listed and shown with their trials, cancelled and resumed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspy.utils import DummyLM
from fastapi.testclient import TestClient
from tests.service._support import QA, READ, drain, error_code, service, sse_events

from dspex.backends.base import PredictRequest, PredictResult
from dspex.backends.dspy_backend import DspyBackend

ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
BODY: dict[str, Any] = {
    "trainset": ROWS,
    "metric": "exact_match",
    "optimizer": "bootstrap_random_search",
    "max_demos": 2,
    "seed": 3,
}


class GatedBackend(DspyBackend):
    """A ``dspy`` backend over DummyLM's answers (right for even questions) that, once armed,
    holds every call after the first ``limit`` until released."""

    def __init__(self) -> None:
        answers = {f"q{i}": {"answer": f"a{i}" if i % 2 == 0 else "wrong"} for i in range(8)}
        super().__init__("default", lm=DummyLM(answers))
        self.count = 0
        self.limit: int | None = None
        self.reached = threading.Event()
        self.released = threading.Event()

    async def complete(self, request: PredictRequest) -> PredictResult:
        self.count += 1  # on the event loop: no lock needed
        if self.limit is not None and self.count > self.limit:
            self.reached.set()
            await asyncio.to_thread(self.released.wait, 60)
        return await super().complete(request)


@pytest.fixture
def lm() -> Iterator[GatedBackend]:
    gated = GatedBackend()
    yield gated
    gated.released.set()


@pytest.fixture
def client(workdir: Path, lm: GatedBackend) -> Iterator[TestClient]:
    (workdir / "dspex.toml").write_text("[optimize]\nnum_candidates = 2\n", encoding="utf-8")
    with service(workdir, backends={"default": lm}) as c:
        response = c.post("/programs?initialize=true", json=QA)
        assert response.status_code == 201, response.text
        yield c


def test_an_optimization_runs_in_the_background_with_its_progress_as_events(
    client: TestClient,
) -> None:
    response = client.post("/programs/qa/optimizations", json=BODY)
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert (accepted["program"], accepted["status"]) == ("qa", "running")
    run_id = accepted["optimization_id"]

    events = sse_events(client.get(f"/optimizations/{run_id}/events", headers=READ).text)
    # "calls" events come every half second of calls: how many depends on the machine
    phases = [d.get("phase") for n, d in events if n == "progress" and d.get("phase") != "calls"]
    assert phases[:3] == ["started", "baseline", "compiling"]
    assert phases.count("candidate") == 5  # seeds -3..1
    assert phases[-1] == "result"
    candidates = [d["trial"] for n, d in events if d.get("phase") == "candidate"]
    assert [t["detail"]["seed"] for t in candidates] == [-3, -2, -1, 0, 1]
    assert all("candidate_spec" not in t["detail"] for t in candidates)
    name, done = events[-1]
    assert (name, done["optimization_id"], done["status"], done["version"]) == (
        "done",
        run_id,
        "completed",
        2,
    )

    shown = client.get(f"/optimizations/{run_id}", headers=READ).json()
    assert (shown["status"], shown["parent_version"], shown["version"]) == ("completed", 1, 2)
    assert (shown["optimizer"], shown["seed"], shown["attempts"]) == (
        "bootstrap_random_search",
        3,
        1,
    )
    assert [t["number"] for t in shown["trials"]] == list(range(7))
    assert shown["score"] == done["score"]
    listed = client.get("/optimizations?program=qa", headers=READ).json()["items"]
    assert [r["optimization_id"] for r in listed] == [run_id]
    assert listed[0]["trials"] == []  # listings leave the trials out
    # the finished run's events, asked again later, end with the same outcome
    again = sse_events(client.get(f"/optimizations/{run_id}/events").text)
    assert again[-1][1]["status"] == "completed"
    version = client.get("/programs/qa?version=2").json()
    assert version["program"]["status"] == "draft"


def test_starting_one_takes_the_admin_scope_and_checks_everything_first(
    client: TestClient,
) -> None:
    refused = client.post("/programs/qa/optimizations", json=BODY, headers=READ)
    assert refused.status_code == 403
    unknown = client.post("/programs/qa/optimizations", json={**BODY, "metric": "nope"})
    assert unknown.status_code == 422, unknown.text
    assert error_code(unknown) == "metric_invalid"
    missing = client.post("/programs/other/optimizations", json=BODY)
    assert missing.status_code == 404
    empty = client.post("/programs/qa/optimizations", json={**BODY, "trainset": []})
    assert empty.status_code == 422
    unfit = client.post("/programs/qa/optimizations", json={**BODY, "trainset": [{"x": 1}]})
    assert unfit.status_code == 422
    assert client.get("/optimizations").json()["items"] == []
    assert client.get("/optimizations/no-such-run").status_code == 404
    assert client.get("/optimizations/no-such-run/events").status_code == 404
    assert client.post("/optimizations/no-such-run/resume").status_code == 404


def test_a_cancelled_optimization_is_interrupted_and_resumes_over_http(
    client: TestClient, lm: GatedBackend
) -> None:
    lm.limit = 8  # the baseline's calls go through; the first candidate's are held
    run_id = client.post("/programs/qa/optimizations", json=BODY).json()["optimization_id"]
    assert lm.reached.wait(60)
    busy = client.post(f"/optimizations/{run_id}/resume")
    assert busy.status_code == 422
    assert client.post(f"/optimizations/{run_id}/cancel", headers=READ).status_code == 403
    cancelled = client.post(f"/optimizations/{run_id}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json() == {"optimization_id": run_id, "status": "cancelling"}
    lm.released.set()
    events = sse_events(client.get(f"/optimizations/{run_id}/events").text)
    assert events[-1][1]["status"] == "interrupted"
    assert events[-1][1]["error"]["code"] == "cancelled"
    stopped = client.get(f"/optimizations/{run_id}").json()
    assert (stopped["status"], stopped["resumable"]) == ("interrupted", True)
    assert [t["detail"]["kind"] for t in stopped["trials"]] == ["baseline"]
    not_running = client.post(f"/optimizations/{run_id}/cancel")
    assert not_running.status_code == 409

    resumed = client.post(f"/optimizations/{run_id}/resume")
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["optimization_id"] == run_id
    done = sse_events(client.get(f"/optimizations/{run_id}/events").text)
    assert done[-1][1]["status"] == "completed"
    phases = [d.get("phase") for _, d in done if d.get("phase") != "calls"]
    assert phases[:2] == ["started", "compiling"]  # the baseline was reused
    drain(client)
    final = client.get(f"/optimizations/{run_id}").json()
    assert (final["status"], final["attempts"], final["version"]) == ("completed", 2, 2)
    again = client.post(f"/optimizations/{run_id}/resume")
    assert again.status_code == 409
    assert "already completed" in again.json()["error"]["message"]


def test_a_run_going_on_in_another_process_is_shown_but_not_streamed(
    client: TestClient,
) -> None:
    from tests.service._support import state_of

    from dspex.store.optimizations import NewOptimization

    store = state_of(client).runtime.store
    new = NewOptimization(
        program="qa",
        program_version=1,
        optimizer="gepa",
        metric="f1",
        trainset_hash="0" * 64,
        trainset_size=1,
        valset_size=1,
        worker_id="elsewhere:7",
        lease_seconds=600,
    )
    record = client.portal.call(store.create_optimization, new)  # type: ignore[union-attr]
    shown = client.get(f"/optimizations/{record.id}").json()
    assert (shown["status"], shown["worker_id"], shown["resumable"]) == (
        "running",
        "elsewhere:7",
        False,
    )
    elsewhere = client.get(f"/optimizations/{record.id}/events")
    assert elsewhere.status_code == 409
    assert "runs in another process" in elsewhere.json()["error"]["message"]
    cancel = client.post(f"/optimizations/{record.id}/cancel")
    assert cancel.status_code == 409
    resume = client.post(f"/optimizations/{record.id}/resume")
    assert resume.status_code == 409
    assert "still running by elsewhere:7" in resume.json()["error"]["message"]

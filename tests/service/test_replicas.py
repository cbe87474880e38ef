"""Two service replicas in one process on one SQLite database (real runtimes, no sockets): a
batch one runs is visible, followed and cancellable from the other, and a batch whose driver
died is taken over. The subprocess version on PostgreSQL, with a ``kill -9``, is
``tests/replicas``."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.service._support import drain, ready_program, service, sse_events, state_of

from dspex.backends.mock import MockBackend
from dspex.errors import StorageError
from dspex.records import BatchStatus
from dspex.service.batches import BatchManager
from dspex.service.metrics import ServiceMetrics

LEASE_S = 0.6


def _items(n: int) -> list[dict[str, str]]:
    return [{"question": f"q{i}"} for i in range(n)]


@contextmanager
def two_replicas(
    workdir: Path, latency_ms: float = 20.0
) -> Iterator[tuple[TestClient, TestClient]]:
    (workdir / "dspex.toml").write_text(f"lease_seconds = {LEASE_S}\n", encoding="utf-8")
    with ExitStack() as stack:
        replicas = [
            stack.enter_context(
                service(
                    workdir, backends={"default": MockBackend("default", latency_ms=latency_ms)}
                )
            )
            for _ in range(2)
        ]
        yield replicas[0], replicas[1]


def _submit(client: TestClient, n: int, concurrency: int = 2) -> str:
    response = client.post(f"/programs/qa/batches?max_concurrency={concurrency}", json=_items(n))
    assert response.status_code == 202, response.text
    return str(response.json()["batch_id"])


def _events(client: TestClient, batch_id: str) -> list[tuple[str, dict[str, Any]]]:
    response = client.get(f"/batches/{batch_id}/events")
    assert response.status_code == 200
    return sse_events(response.text)


def test_a_batch_run_by_one_replica_is_visible_and_followed_from_the_other(
    workdir: Path,
) -> None:
    with two_replicas(workdir) as (a, b):
        ready_program(a)
        batch_id = _submit(a, 40)
        seen = b.get(f"/batches/{batch_id}").json()
        assert (seen["program"], seen["running_here"]) == ("qa", False)
        assert seen["driver"].startswith("service-test:")

        events = _events(b, batch_id)  # followed in the store until it ends
        progress = [data for name, data in events if name == "progress"]
        assert progress
        assert all(e["index"] is None and e["total"] == 40 for e in progress)
        dones = [e["done"] for e in progress]
        assert dones == sorted(dones)
        assert events[-1] == (
            "done",
            {"batch_id": batch_id, "status": "completed", "stats": None, "error": None},
        )
        final = b.get(f"/batches/{batch_id}").json()
        assert (final["counts"]["completed"], final["driver"]) == (40, None)
        results = b.get(f"/batches/{batch_id}/results").text
        lines = [json.loads(line) for line in results.splitlines()]
        assert [line["index"] for line in lines] == list(range(40))
        item = b.get(f"/executions/{lines[7]['execution_id']}").json()
        assert (item["status"], item["inputs"]) == ("completed", {"question": "q7"})


def test_a_cancel_sent_to_the_other_replica_stops_the_batch_where_it_runs(
    workdir: Path,
) -> None:
    with two_replicas(workdir, latency_ms=50.0) as (a, b):
        ready_program(a)
        batch_id = _submit(a, 400)
        # the cancel goes to the replica that drives it once A holds the batch's driver lease
        for _ in range(200):
            if b.get(f"/batches/{batch_id}").json()["driver"] is not None:
                break
            time.sleep(0.05)
        response = b.post(f"/batches/{batch_id}/cancel")
        assert response.status_code == 202
        assert response.json() == {"batch_id": batch_id, "status": "cancelling"}
        events = _events(a, batch_id)  # the driver's own stream ends when it stopped
        assert events[-1][0] == "done"
        assert events[-1][1]["status"] == "cancelled"
        body = b.get(f"/batches/{batch_id}").json()
        assert body["status"] == "cancelled"
        assert body["counts"]["completed"] < 400
        assert body["cancel_requested"] is True


def test_a_cancel_of_a_batch_no_replica_runs_cancels_it_at_once(workdir: Path) -> None:
    with two_replicas(workdir) as (a, _):
        ready_program(a)
        store = state_of(a).runtime.store

        async def orphan() -> str:
            batch = await store.create_batch("qa", 1, {}, total=3)
            await store.set_batch_status(batch.id, BatchStatus.RUNNING)
            return batch.id

        batch_id = a.portal.call(orphan)  # type: ignore[union-attr]
        response = a.post(f"/batches/{batch_id}/cancel")
        assert response.status_code == 202
        assert response.json() == {"batch_id": batch_id, "status": "cancelled"}
        assert a.get(f"/batches/{batch_id}").json()["status"] == "cancelled"


def test_a_replica_takes_over_a_batch_whose_driver_died(workdir: Path) -> None:
    with two_replicas(workdir) as (a, b):
        ready_program(a)
        store = state_of(a).runtime.store

        async def dead_driver() -> str:
            config = {"inputs": "stored", "max_concurrency": 4}
            batch = await store.create_batch("qa", 1, config, total=10)
            await store.add_batch_items(batch.id, "qa", 1, list(enumerate(_items(10))))
            await store.take_batch_driver(batch.id, "dead", 0.001)
            await store.set_batch_status(batch.id, BatchStatus.RUNNING)
            return batch.id

        batch_id = a.portal.call(dead_driver)  # type: ignore[union-attr]
        events = _events(b, batch_id)  # taken over by one of them within half a lease
        assert events[-1][1]["status"] == "completed"
        body = a.get(f"/batches/{batch_id}").json()
        assert (body["status"], body["counts"]["completed"]) == ("completed", 10)
        lines = a.get(f"/batches/{batch_id}/results").text.splitlines()
        assert len(lines) == 10


class _Failing:
    """A runtime whose take-overs fail: first a dspex error, then an unexpected one."""

    def __init__(self) -> None:
        self.calls = 0

    async def take_over_batch(self, **_: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise StorageError("database error: connection lost")
        raise RuntimeError("boom")


@pytest.mark.looptime
async def test_the_take_over_loop_logs_failures_and_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = BatchManager(ServiceMetrics())
    runtime = _Failing()
    with caplog.at_level(logging.WARNING, logger="dspex.service"):
        loop = asyncio.ensure_future(manager.take_over_loop(runtime, 1.0))  # type: ignore[arg-type]
        await asyncio.sleep(2.5)
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert runtime.calls == 2
    assert "taking over a batch failed: database error: connection lost" in caplog.text
    assert "RuntimeError: boom" in caplog.text


def test_a_replica_that_stops_hands_its_batches_over(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(f"lease_seconds = {LEASE_S}\n", encoding="utf-8")
    backends = {"default": MockBackend("default", latency_ms=50.0)}
    with service(workdir, backends=backends) as a:
        ready_program(a)
        handed = _submit(a, 400, concurrency=8)
        cancelled = _submit(a, 400, concurrency=8)
        assert a.post(f"/batches/{cancelled}/cancel").json()["status"] == "cancelling"
    with service(workdir, backends=backends) as b:
        body = b.get(f"/batches/{handed}").json()
        assert body["status"] in ("running", "completed")  # taken over at once, or not yet
        assert body["counts"]["completed"] < 400 or body["status"] == "completed"
        assert b.get(f"/batches/{cancelled}").json()["status"] == "cancelled"  # as asked
        events = _events(b, handed)
        assert events[-1][1]["status"] == "completed"
        final = b.get(f"/batches/{handed}").json()
        assert (final["counts"]["completed"], final["counts"]["cancelled"]) == (400, 0)
        assert b.get(f"/batches/{cancelled}").json()["status"] == "cancelled"


async def test_only_a_recoverable_batch_is_handed_over(workdir: Path) -> None:
    from tests.runtime._support import make_runtime, ready

    from dspex.store import MemoryStore

    store = MemoryStore()
    async with make_runtime(store) as rt:
        await ready(rt)
        done = await rt.run_batch("qa", _items(2))
        assert await rt.hand_over_batch(done.batch_id) is None
        batch = await store.create_batch("qa", 1, {"inputs": "stored"}, total=1)
        await store.set_batch_status(batch.id, BatchStatus.CANCELLED)
        info = await rt.hand_over_batch(batch.id)
        assert info is not None
        assert (info.status, info.driver) == ("running", "handed-over")


async def _forever() -> Any:
    await asyncio.Event().wait()


@pytest.mark.looptime
async def test_shutdown_hands_over_what_it_can_and_logs_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from dspex import BatchHandle

    manager = BatchManager(ServiceMetrics())
    for batch_id in ("kept", "asked", "failing"):

        async def starter(_: Any, batch_id: str = batch_id) -> BatchHandle:
            return BatchHandle(batch_id, asyncio.ensure_future(_forever()), "qa")

        await manager.start("qa", starter)
    asked = manager.get("asked")
    assert asked is not None
    manager.cancel(asked)
    handed: list[str] = []

    async def hand_over(batch_id: str) -> None:
        if batch_id == "failing":
            raise StorageError("database error: connection lost")
        handed.append(batch_id)

    with caplog.at_level(logging.WARNING, logger="dspex.service"):
        await manager.shutdown(hand_over=hand_over)
    assert handed == ["kept"]  # not the one a client cancelled
    assert "batch failing could not be handed over" in caplog.text
    assert manager.running == []


@pytest.mark.looptime
async def test_shutdown_without_hand_over_only_cancels() -> None:
    from dspex import BatchHandle

    manager = BatchManager(ServiceMetrics())

    async def starter(_: Any) -> BatchHandle:
        return BatchHandle("b", asyncio.ensure_future(_forever()), "qa")

    run = await manager.start("qa", starter)
    await manager.shutdown()
    assert run.finished
    assert run.final_status() == "cancelled"


def _run_in_background(client: TestClient) -> str:
    response = client.post(
        "/programs/qa/executions?wait=false", json={"inputs": {"question": "slow?"}}
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "running"
    return str(response.json()["execution_id"])


def test_an_execution_run_by_one_replica_is_cancelled_through_the_other(
    workdir: Path,
) -> None:
    # the backend would answer in 30 s: only the cancel ends the run sooner
    with two_replicas(workdir, latency_ms=30_000.0) as (a, b):
        ready_program(a)
        execution_id = _run_in_background(a)
        assert b.get(f"/executions/{execution_id}").json()["status"] == "running"
        response = b.post(f"/executions/{execution_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json() == {"execution_id": execution_id, "status": "cancelling"}
        # followed from B in the store until A's run stops at its next heartbeat
        events = b.get(f"/executions/{execution_id}/events")
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        followed = sse_events(events.text)
        drain(a)
        body = b.get(f"/executions/{execution_id}").json()
        assert followed == [
            *(("step_finished", step) for step in body["steps"]),
            ("done", body),
        ]
        assert [s["module"] for s in body["steps"]] == ["answer"]
        assert body["steps"][0]["status"] == "cancelled"
        assert body["status"] == "cancelled"
        assert body["error"]["code"] == "cancelled"
        assert body["outputs"] is None
        # asking again (as for batches) answers what it is now
        again = b.post(f"/executions/{execution_id}/cancel")
        assert again.json() == {"execution_id": execution_id, "status": "cancelled"}


def test_a_finished_execution_cannot_be_cancelled(workdir: Path) -> None:
    with two_replicas(workdir) as (a, b):
        ready_program(a)
        done = a.post("/programs/qa/executions", json={"inputs": {"question": "quick?"}})
        assert done.json()["status"] == "completed"
        # a finished execution's events come at once: its steps, then its record
        events = sse_events(b.get(f"/executions/{done.json()['execution_id']}/events").text)
        record = b.get(f"/executions/{done.json()['execution_id']}").json()
        assert [name for name, _ in events] == ["step_finished", "done"]
        assert events[0][1]["module"] == "answer"
        assert events[1][1] == record
        assert b.get("/executions/nope/events").status_code == 404
        response = b.post(f"/executions/{done.json()['execution_id']}/cancel")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "execution_finished"
        assert "completed" in response.json()["error"]["message"]


def test_a_cancel_of_an_execution_nobody_holds_cancels_it_at_once(workdir: Path) -> None:
    with two_replicas(workdir) as (a, b):
        ready_program(a)
        store = state_of(a).runtime.store

        async def orphan() -> str:
            started = await store.start_execution(
                "qa", 1, {"question": "lost?"}, worker_id="gone", lease_seconds=LEASE_S
            )
            await asyncio.sleep(LEASE_S * 1.5)  # its holder never renews: the lease lapses
            return started.id

        execution_id = a.portal.call(orphan)  # type: ignore[union-attr]
        response = b.post(f"/executions/{execution_id}/cancel")
        assert response.status_code == 202
        assert response.json() == {"execution_id": execution_id, "status": "cancelled"}
        assert b.get(f"/executions/{execution_id}").json()["status"] == "cancelled"
        assert b.post("/executions/nope/cancel").status_code == 404


# draft answers at once; polish would take 30 s on the slow backend: only a cancel ends it
DRAFT_THEN_POLISH: dict[str, Any] = {
    "name": "chain",
    "signature": "question: str -> answer: str",
    "modules": {
        "draft": {"kind": "predict", "signature": "question: str -> draft: str"},
        "polish": {
            "kind": "predict",
            "signature": "draft: str -> answer: str",
            "inputs": {"draft": "draft.draft"},
            "backend": "slow",
        },
    },
}


async def _follow_then_cancel(app: Any, execution_id: str) -> tuple[str, list[str]]:
    """GET the execution's events as an ASGI client that reads them as they are sent; at the
    first ``step_finished`` it looks up the execution's status, then cancels it. The body, and
    the statuses seen at each ``step_finished`` before the cancel."""
    from tests.service._support import ADMIN_KEY

    state = app.state.dspex
    seen: list[str] = []
    bodies: list[bytes] = []
    requests = [{"type": "http.request", "body": b""}]

    async def receive() -> dict[str, Any]:
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays until the stream ends
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body" or not message.get("body"):
            return
        bodies.append(message["body"])
        if b"event: step_finished" in message["body"] and not seen:
            seen.append((await state.runtime.get_execution(execution_id)).status.value)
            await state.runtime.cancel_execution(execution_id)

    path = f"/executions/{execution_id}/events"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    await app(scope, receive, send)
    return b"".join(bodies).decode(), seen


@pytest.mark.slow
def test_the_other_replica_streams_each_step_of_an_execution_while_it_runs(
    workdir: Path,
) -> None:
    (workdir / "dspex.toml").write_text(f"lease_seconds = {LEASE_S}\n", encoding="utf-8")
    backends = {
        "default": MockBackend("default"),
        "slow": MockBackend("slow", latency_ms=30_000.0),
    }
    with service(workdir, backends=backends) as a, service(workdir, backends=backends) as b:
        ready_program(a, DRAFT_THEN_POLISH)
        response = a.post(
            "/programs/chain/executions?wait=false", json={"inputs": {"question": "why?"}}
        )
        assert response.status_code == 202, response.text
        execution_id = response.json()["execution_id"]
        portal = b.portal
        assert portal is not None
        text, seen = portal.call(_follow_then_cancel, b.app, execution_id)
        # draft's step came from A's store records while polish still ran there
        assert seen == ["running"]
        drain(a)
        body = b.get(f"/executions/{execution_id}").json()
    followed = sse_events(text)
    assert followed == [
        *(("step_finished", step) for step in body["steps"]),
        ("done", body),
    ]
    assert [(s["module"], s["status"]) for s in body["steps"]] == [
        ("draft", "completed"),
        ("polish", "cancelled"),
    ]
    assert body["status"] == "cancelled"
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [1, 2, 3]

"""Two real ``dspex serve`` processes on one PostgreSQL database share their batches.

A batch submitted to one replica is visible from the other; a cancel sent to the other stops it
where it runs; and when the replica driving a batch is killed (``kill -9``) mid-batch, the other
takes the batch over once the dead driver's lease lapses and completes it: every item completed
exactly once, nothing lost. The replicas are real processes over real sockets, so the waits here
watch real time (as long as the work takes), with generous limits and no timed assertion.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.crash._support import postgres_database
from tests.support.store_reads import batch_executions

from dspex.records import ExecutionStatus
from dspex.store import open_store

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_S = 1.5  # the replicas' lease: a dead driver's batch is taken over within about this
LIMIT_S = 90.0
ITEMS = 160

CONFIG = f"""\
lease_seconds = {LEASE_S}

[backends.default]
kind = "mock"
latency_ms = 100
"""

ECHO: dict[str, Any] = {
    "name": "echo",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    async with postgres_database(postgres_url) as url:
        yield url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Replica:
    """One ``dspex serve`` process and how to talk to it."""

    process: subprocess.Popen[str]
    port: int
    log: Path

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode()
            status = exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        assert status == 200, (status, body)
        return body

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def replicas(cwd: Path, url: str, count: int) -> Iterator[list[Replica]]:
    """``count`` replicas on ``url``, ready; each killed at the end if still running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    started: list[Replica] = []
    try:
        for n in range(count):
            port = _free_port()
            log = cwd / f"replica-{n}.log"
            command = [sys.executable, "-m", "dspex", "serve", "--port", str(port)]
            command += ["--database-url", url, "--log-level", "warning"]
            with log.open("w") as handle:
                process = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=env,
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            started.append(Replica(process, port, log))
        for replica in started:
            _wait_until(lambda r=replica: _ready(r), what=f"replica on {replica.port}", of=replica)
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.kill()
            replica.process.wait(timeout=LIMIT_S)


def _ready(replica: Replica) -> bool:
    try:
        return replica.call("GET", "/readyz")[0] == 200
    except OSError:
        return False


def _wait_until(
    condition: Callable[[], bool], *, what: str, of: Replica | None = None, limit: float = LIMIT_S
) -> None:
    """Wait (real time: other processes do the work) until ``condition()`` holds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        if of is not None and of.process.poll() is not None:
            raise AssertionError(f"the replica exited ({of.process.returncode}):\n{of.output()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _setup(cwd: Path) -> None:
    (cwd / "dspex.toml").write_text(CONFIG, encoding="utf-8")


def _submit(replica: Replica, total: int = ITEMS) -> str:
    items = [{"question": f"q{i}"} for i in range(total)]
    status, body = replica.call("POST", "/programs/echo/batches?max_concurrency=4", items)
    assert status == 202, body
    return str(body["batch_id"])


def _register(replica: Replica) -> None:
    status, body = replica.call("POST", "/programs?initialize=true", ECHO)
    assert status == 201, body
    assert body["status"] == "ready", body


def _done(info: dict[str, Any]) -> int:
    counts = info["counts"]
    return int(counts["completed"] + counts["failed"] + counts["cancelled"])


async def _assert_every_item_completed_once(url: str, batch_id: str, total: int) -> list[int]:
    """Every index has exactly one execution, completed, with its answer; the batch counts
    agree. Returns the attempts of each item."""
    async with open_store(url) as store:
        rows = await batch_executions(store, batch_id)
        batch = await store.get_batch(batch_id)
    assert sorted(r.batch_index for r in rows if r.batch_index is not None) == list(range(total))
    assert len(rows) == total
    assert Counter(r.status for r in rows) == {ExecutionStatus.COMPLETED: total}
    for row in rows:
        assert row.outputs is not None
        assert row.outputs["answer"]
        assert row.lease_token is None
    assert (batch.completed, batch.failed, batch.cancelled) == (total, 0, 0)
    assert batch.status.value == "completed"
    assert batch.driver is None  # released by the run that finished it
    return [r.attempts for r in rows]


async def test_a_replica_killed_mid_batch_leaves_it_to_the_other_which_completes_it(
    database: str, tmp_path: Path
) -> None:
    _setup(tmp_path)
    with replicas(tmp_path, database, 2) as (a, b):
        _register(a)
        batch_id = _submit(a)

        # visible from the other replica at once, driven by the first
        seen = b.get(f"/batches/{batch_id}")
        assert seen["program"] == "echo"
        assert seen["counts"]["total"] == ITEMS
        assert seen["running_here"] is False
        first_driver = seen["driver"]
        assert first_driver is not None

        _wait_until(
            lambda: b.get(f"/batches/{batch_id}")["counts"]["completed"] >= 20,
            what="the first items",
            of=a,
        )
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(timeout=LIMIT_S)
        assert _done(b.get(f"/batches/{batch_id}")) < ITEMS  # killed mid-batch

        _wait_until(
            lambda: b.get(f"/batches/{batch_id}")["status"] == "completed",
            what="the other replica to complete the batch",
            of=b,
        )
        final = b.get(f"/batches/{batch_id}")
        assert final["counts"]["completed"] == ITEMS
        attempts = await _assert_every_item_completed_once(database, batch_id, ITEMS)
        # the items the killed replica was running ran again on the other one
        assert max(attempts) == 2

        status, body = b.call("GET", f"/batches/{batch_id}/results")
        assert status == 200
        lines = [json.loads(line) for line in body.splitlines()] if isinstance(body, str) else []
        assert [line["index"] for line in lines] == list(range(ITEMS))
        assert {line["status"] for line in lines} == {"completed"}
    assert "Traceback" not in b.output(), b.output()


async def test_a_cancel_sent_to_one_replica_stops_the_batch_the_other_runs(
    database: str, tmp_path: Path
) -> None:
    _setup(tmp_path)
    with replicas(tmp_path, database, 2) as (a, b):
        _register(a)
        batch_id = _submit(a)
        _wait_until(
            lambda: b.get(f"/batches/{batch_id}")["counts"]["completed"] >= 8,
            what="the first items",
            of=a,
        )
        status, body = b.call("POST", f"/batches/{batch_id}/cancel")
        assert status == 202, body
        assert body == {"batch_id": batch_id, "status": "cancelling"}
        _wait_until(
            lambda: a.get(f"/batches/{batch_id}")["status"] == "cancelled",
            what="the driving replica to cancel the batch",
            of=a,
        )
        stopped = a.get(f"/batches/{batch_id}")
        assert stopped["counts"]["completed"] < ITEMS  # stopped mid-batch
        assert stopped["running_here"] is False
        assert stopped["driver"] is None
        async with open_store(database) as store:
            states = await store.batch_item_states(batch_id)
        assert "running" not in states  # the running items were recorded cancelled

        # resumable from the other replica, with the same items
        items = [{"question": f"q{i}"} for i in range(ITEMS)]
        status, body = b.call("POST", f"/batches/{batch_id}/resume?max_concurrency=8", items)
        assert status == 202, body
        _wait_until(
            lambda: a.get(f"/batches/{batch_id}")["status"] == "completed",
            what="the resumed batch",
            of=b,
        )
        attempts = await _assert_every_item_completed_once(database, batch_id, ITEMS)
        assert max(attempts) <= 2
    for replica in (a, b):
        assert "Traceback" not in replica.output(), replica.output()


async def test_a_replica_stopped_with_sigterm_hands_its_batch_to_the_other(
    database: str, tmp_path: Path
) -> None:
    _setup(tmp_path)
    with replicas(tmp_path, database, 2) as (a, b):
        _register(a)
        batch_id = _submit(a)
        first_driver = b.get(f"/batches/{batch_id}")["driver"]
        _wait_until(
            lambda: b.get(f"/batches/{batch_id}")["counts"]["completed"] >= 8,
            what="the first items",
            of=a,
        )
        a.process.send_signal(signal.SIGTERM)
        a.process.wait(timeout=LIMIT_S)  # uvicorn exits by the signal once it shut down
        # handed over as it stopped, not left to its lease: no longer its batch, no item left
        # running under its leases
        handed = b.get(f"/batches/{batch_id}")
        assert handed["driver"] != first_driver, handed
        assert handed["status"] == "running"
        _wait_until(
            lambda: b.get(f"/batches/{batch_id}")["status"] == "completed",
            what="the other replica to complete the batch",
            of=b,
        )
        await _assert_every_item_completed_once(database, batch_id, ITEMS)
    for replica in (a, b):
        assert "Traceback" not in replica.output(), replica.output()

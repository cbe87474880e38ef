"""Batches under crashes: real ``dspex batch`` processes killed mid-run, on SQLite and PostgreSQL.

SIGKILL leaves the claimed items ``running``; once their leases have expired (aged with SQL, not
by sleeping) ``--resume`` re-runs them — at least once, counted as extra attempts — and every item
ends with exactly one terminal execution. SIGTERM cancels the running items and records them, so
nothing is left ``running``. In-process: heartbeats keep the leases of items whose module blocks
a thread for longer than the lease, and a zombie's writes under a taken-over lease change nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.crash import _sleepy
from tests.crash._support import age_leases, postgres_database
from tests.support.store_reads import batch_executions

import dspex
from dspex.records import BatchStatus, ExecutionRecord, ExecutionStatus, FinishRequest
from dspex.store import open_store
from dspex.store.base import Store

ECHO: dict[str, Any] = {
    "name": "echo",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}

SLEEPY: dict[str, Any] = {
    "name": "sleepy",
    "signature": "question: str -> answer: str",
    "modules": {
        "work": {
            "kind": "python",
            "function": f"{_sleepy.__name__}:slow_echo",
            "signature": "question: str -> answer: str",
        }
    },
}

# Items that fail validation (``--validate per_item``): failures scripted to recur on every run.
BAD = frozenset({7, 50, 99})

LIMIT_S = 30.0
GRACE_S = 10.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database: a SQLite file, or a fresh PostgreSQL database of its own."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'dspex.db'}"
        async with open_store(url, auto_upgrade=True):
            pass
        yield url
        return
    async with postgres_database(request.getfixturevalue("postgres_url")) as url:
        yield url


async def _register(url: str, cwd: Path, spec: dict[str, Any]) -> None:
    async with dspex.Runtime.open(url, cwd=cwd) as rt:
        await rt.register(spec)
        info = await rt.initialize(spec["name"])
        assert info.status == "ready", info.error


@dataclass(frozen=True)
class Job:
    """A ``dspex batch`` set up in a working directory: config, program and input file."""

    cwd: Path
    url: str
    total: int

    def spawn(self, *args: str, group: bool = False) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
        command = [
            sys.executable,
            "-m",
            "dspex",
            "batch",
            "echo",
            "items.jsonl",
            "--out",
            "out.jsonl",
            "--database-url",
            self.url,
            "--concurrency",
            "8",
            "--validate",
            "per_item",
            "--json",
            *args,
        ]
        return subprocess.Popen(
            command,
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # its own process group: the test can kill a parent with its worker processes
            start_new_session=group,
        )


async def _job(url: str, cwd: Path, *, total: int, latency_ms: int) -> Job:
    (cwd / "dspex.toml").write_text(
        f'[backends.default]\nkind = "mock"\nlatency_ms = {latency_ms}\n', encoding="utf-8"
    )
    lines = [
        json.dumps({"prompt": "no question"} if i in BAD else {"question": f"q{i}"})
        for i in range(total)
    ]
    (cwd / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    await _register(url, cwd, ECHO)
    return Job(cwd, url, total)


async def _poll_batch(
    url: str, process: subprocess.Popen[str], enough: Any, *, limit: float = LIMIT_S
) -> str:
    """Wait until the batch's executions satisfy ``enough(rows)``; returns the batch id.

    This waits on another process, so it watches real time; it returns as soon as the
    condition holds and fails when the process exits first.
    """
    deadline = time.monotonic() + limit
    async with open_store(url) as store:
        while time.monotonic() < deadline:
            batches = await store.list_batches()
            if batches and enough(await batch_executions(store, batches[0].id)):
                return batches[0].id
            if process.poll() is not None:
                out, err = process.communicate()
                raise AssertionError(f"dspex batch exited early ({process.returncode}): {err}{out}")
            await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for the batch")


def _completed_at_least(count: int) -> Any:
    return lambda rows: sum(r.status is ExecutionStatus.COMPLETED for r in rows) >= count


async def _rows(url: str, batch_id: str) -> list[ExecutionRecord]:
    async with open_store(url) as store:
        return await batch_executions(store, batch_id)


def _index(row: ExecutionRecord) -> int:
    assert row.batch_index is not None
    return row.batch_index


def _finish(process: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        return process.communicate(timeout=LIMIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


async def _resume_to_completion(job: Job, batch_id: str, *args: str) -> dict[str, Any]:
    out, err = _finish(job.spawn("--resume", batch_id, *args))
    assert "Traceback" not in err, err
    result: dict[str, Any] = json.loads(out)
    assert result.get("batch_id") == batch_id, (out, err)
    return result


async def _assert_each_item_ran_to_one_final_state(job: Job, batch_id: str) -> dict[int, int]:
    """Every index has exactly one terminal execution, the out file and the batch counts agree;
    returns the attempts of each index."""
    rows = await _rows(job.url, batch_id)
    indexes = [r.batch_index for r in rows]
    assert sorted(i for i in indexes if i is not None) == list(range(job.total))
    assert len(indexes) == job.total  # exactly one execution per item
    for row in rows:
        want = ExecutionStatus.FAILED if row.batch_index in BAD else ExecutionStatus.COMPLETED
        assert row.status is want, (row.batch_index, row.status, row.error_code)
        assert row.lease_token is None
        if want is ExecutionStatus.COMPLETED:
            assert row.outputs is not None
            assert row.outputs["answer"]
        else:
            assert row.error_code == "validation_error"

    lines = [json.loads(x) for x in (job.cwd / "out.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(job.total))
    by_index = {r.batch_index: r for r in rows}
    assert [line["execution_id"] for line in lines] == [by_index[i].id for i in range(job.total)]
    assert [line["status"] for line in lines] == [
        by_index[i].status.value for i in range(job.total)
    ]

    async with open_store(job.url) as store:
        batch = await store.get_batch(batch_id)
        assert (await store.open_executions()).running == 0
    counts = Counter(r.status for r in rows)
    assert batch.status is BatchStatus.COMPLETED
    assert batch.finished_at is not None
    assert (batch.completed, batch.failed, batch.cancelled) == (
        counts[ExecutionStatus.COMPLETED],
        counts[ExecutionStatus.FAILED],
        counts[ExecutionStatus.CANCELLED],
    )
    assert batch.total == job.total
    return {_index(r): r.attempts for r in rows}


def _kill_group(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=LIMIT_S)
    # orphaned worker processes may take a moment to go; a SIGKILLed one can write nothing more
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


# -- SIGKILL, then resume ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("reaped", [True, False], ids=["cleanup-then-resume", "resume-alone"])
async def test_a_killed_batch_resumes_to_exactly_one_final_execution_per_item(
    database: str, tmp_path: Path, reaped: bool
) -> None:
    job = await _job(database, tmp_path, total=120, latency_ms=60)
    process = job.spawn()
    try:
        batch_id = await _poll_batch(database, process, _completed_at_least(16))
    finally:
        process.kill()
        process.communicate(timeout=LIMIT_S)
    assert process.returncode == -signal.SIGKILL

    before = {_index(r): r for r in await _rows(database, batch_id)}
    in_flight = {i for i, r in before.items() if r.status is ExecutionStatus.RUNNING}
    done = {i: r.id for i, r in before.items() if r.status is ExecutionStatus.COMPLETED}
    assert in_flight, "the kill came after every item was written"
    assert len(done) >= 16

    assert await age_leases(database) == len(in_flight)
    if reaped:
        async with dspex.Runtime.open(database, cwd=tmp_path) as rt:
            report = await rt.cleanup()
        assert report.requeued.count == len(in_flight)
        states = Counter(r.status for r in await _rows(database, batch_id))
        assert states[ExecutionStatus.RUNNING] == 0

    result = await _resume_to_completion(job, batch_id)
    assert result["status"] == "completed"
    assert result["stats"]["skipped"] == len(done)

    attempts = await _assert_each_item_ran_to_one_final_state(job, batch_id)
    assert all(attempts[i] >= 2 for i in in_flight)  # at least once: re-run as another attempt
    rows = {_index(r): r for r in await _rows(database, batch_id)}
    for index, execution_id in done.items():
        assert rows[index].id == execution_id
        assert attempts[index] == 1  # a completed item is never run again


@pytest.mark.slow
async def test_a_killed_multi_process_batch_resumes_to_exactly_one_final_execution_per_item(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'dspex.db'}"
    async with open_store(url, auto_upgrade=True):
        pass
    # two chunks of 200, so that both worker processes get items
    job = await _job(url, tmp_path, total=400, latency_ms=50)
    process = job.spawn("--workers", "2", group=True)

    def both_workers_busy(rows: list[ExecutionRecord]) -> bool:
        done = [r.batch_index for r in rows if r.status is ExecutionStatus.COMPLETED]
        return (
            sum(i < 200 for i in done if i is not None) >= 8
            and sum(i >= 200 for i in done if i is not None) >= 8
        )

    try:
        batch_id = await _poll_batch(url, process, both_workers_busy, limit=60.0)
    finally:
        _kill_group(process)
    assert process.returncode == -signal.SIGKILL

    before = await _rows(url, batch_id)
    in_flight = {_index(r) for r in before if r.status is ExecutionStatus.RUNNING}
    assert in_flight
    await age_leases(url)

    result = await _resume_to_completion(job, batch_id, "--workers", "2")
    assert result["status"] == "completed"

    attempts = await _assert_each_item_ran_to_one_final_state(job, batch_id)
    assert all(attempts[i] >= 2 for i in in_flight)


@pytest.mark.slow
async def test_a_batch_resumed_before_the_killed_runs_leases_expire_waits_then_runs_each_once(
    database: str, tmp_path: Path
) -> None:
    job = await _job(database, tmp_path, total=120, latency_ms=60)
    toml = tmp_path / "dspex.toml"
    toml.write_text("lease_seconds = 2\n" + toml.read_text(encoding="utf-8"), encoding="utf-8")
    process = job.spawn()
    try:
        batch_id = await _poll_batch(database, process, _completed_at_least(16))
    finally:
        process.kill()
        process.communicate(timeout=LIMIT_S)
    assert process.returncode == -signal.SIGKILL

    before = {_index(r): r for r in await _rows(database, batch_id)}
    in_flight = {i: r for i, r in before.items() if r.status is ExecutionStatus.RUNNING}
    done = {i: r.id for i, r in before.items() if r.status is ExecutionStatus.COMPLETED}
    assert in_flight, "the kill came after every item was written"
    expiries = [r.lease_expires_at for r in in_flight.values() if r.lease_expires_at is not None]
    # no ageing: the resume starts while the dead run's leases are still live
    assert datetime.now(UTC) < max(expiries)

    result = await _resume_to_completion(job, batch_id)
    assert result["status"] == "completed"
    assert result["stats"]["skipped"] == len(done)

    attempts = await _assert_each_item_ran_to_one_final_state(job, batch_id)
    rows = {_index(r): r for r in await _rows(database, batch_id)}
    for index, row in in_flight.items():
        assert attempts[index] == 2  # re-run exactly once, by the resume
        started = rows[index].started_at
        assert started is not None
        assert row.lease_expires_at is not None
        assert started >= row.lease_expires_at  # claimed only once the dead lease expired
    for index, execution_id in done.items():
        assert rows[index].id == execution_id
        assert attempts[index] == 1


# -- SIGTERM ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_terminated_batch_records_running_items_cancelled_then_resumes_each_once(
    database: str, tmp_path: Path
) -> None:
    job = await _job(database, tmp_path, total=120, latency_ms=60)
    process = job.spawn()
    try:
        batch_id = await _poll_batch(database, process, _completed_at_least(16))
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = process.communicate(timeout=GRACE_S)
        assert time.monotonic() - sent < GRACE_S
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, err
    assert "Traceback" not in err
    assert f"--resume {batch_id}" in err

    rows = await _rows(database, batch_id)
    states = Counter(r.status for r in rows)
    assert states[ExecutionStatus.RUNNING] == 0
    assert states[ExecutionStatus.COMPLETED] >= 16
    assert states[ExecutionStatus.CANCELLED] > 0
    assert all(r.lease_token is None for r in rows)
    async with open_store(database) as store:
        batch = await store.get_batch(batch_id)
    assert batch.status is BatchStatus.CANCELLED
    assert (batch.completed, batch.failed, batch.cancelled) == (
        states[ExecutionStatus.COMPLETED],
        states[ExecutionStatus.FAILED],
        states[ExecutionStatus.CANCELLED],
    )
    done = {_index(r): r.id for r in rows if r.status is ExecutionStatus.COMPLETED}
    cancelled = {_index(r) for r in rows if r.status is ExecutionStatus.CANCELLED}

    result = await _resume_to_completion(job, batch_id)
    assert result["status"] == "completed"
    attempts = await _assert_each_item_ran_to_one_final_state(job, batch_id)
    after = {_index(r): r.id for r in await _rows(database, batch_id)}
    assert all(after[i] == done[i] and attempts[i] == 1 for i in done)
    assert all(attempts[i] == 2 for i in cancelled)


# -- heartbeats while a module blocks its thread ----------------------------------------------


async def test_heartbeats_keep_the_leases_of_items_whose_module_blocks_a_thread(
    database: str, tmp_path: Path
) -> None:
    (tmp_path / "dspex.toml").write_text(
        f'lease_seconds = 1.0\nallowed_imports = ["{_sleepy.__name__}"]\n', encoding="utf-8"
    )
    await _register(database, tmp_path, SLEEPY)
    expiries: set[Any] = set()
    reaped = 0
    stop = asyncio.Event()

    async def concurrent_cleanup(store: Store) -> None:
        nonlocal reaped
        while not stop.is_set():
            result = await store.reap_expired_leases()
            reaped += len(result.requeued) + len(result.failed)
            for row in (await store.list_executions()).items:
                if row.status is ExecutionStatus.RUNNING:
                    expiries.add(row.lease_expires_at)
            await asyncio.sleep(0.1)

    async with dspex.Runtime.open(database, cwd=tmp_path) as rt, open_store(database) as other:
        reaper = asyncio.create_task(concurrent_cleanup(other))
        try:
            result = await rt.run_batch(
                "sleepy", [{"question": f"q{i}"} for i in range(4)], max_concurrency=4
            )
        finally:
            stop.set()
            await reaper
    assert 2 * rt.settings.lease_seconds < _sleepy.SECONDS
    assert reaped == 0
    assert result.stats.completed == 4
    assert result.results is not None
    rows = await _rows(database, result.batch_id)
    assert [(r.status, r.attempts) for r in rows] == [(ExecutionStatus.COMPLETED, 1)] * 4
    assert [r.outputs for r in rows] == [{"answer": f"Q{i}"} for i in range(4)]
    # the one chunk lease was pushed forward again and again while the threads slept
    assert len(expiries) >= 3


# -- a zombie write ---------------------------------------------------------------------------


async def test_a_zombie_cannot_finish_batch_items_another_worker_took_over(
    database: str, tmp_path: Path
) -> None:
    await _register(database, tmp_path, ECHO)
    async with open_store(database) as store:
        batch = await store.create_batch("echo", 1, {}, 3)
        zombie = await store.add_and_claim_batch_items(
            batch.id,
            "echo",
            1,
            [(i, {"question": f"q{i}"}) for i in range(3)],
            worker_id="zombie",
            lease_seconds=30.0,
        )
        assert await age_leases(database) == 3
        taker = await store.claim_batch_items(
            batch.id, [0, 1, 2], worker_id="taker", lease_seconds=30.0
        )
        assert taker.keys() == zombie.keys()
        assert {t for _, t in taker.values()}.isdisjoint({t for _, t in zombie.values()})

        def finishing(claims: dict[int, tuple[str, str]]) -> list[FinishRequest]:
            return [
                FinishRequest(
                    execution_id=eid,
                    lease_token=token,
                    status=ExecutionStatus.COMPLETED,
                    outputs={"answer": f"by {token}"},
                    duration_ms=1.0,
                )
                for eid, token in claims.values()
            ]

        assert await store.finish_executions(finishing(zombie)) == [False, False, False]
        assert await store.heartbeat_lease(next(iter(zombie.values()))[1], 30.0) == 0
        rows = await batch_executions(store, batch.id)
        assert [(r.status, r.worker_id, r.attempts, r.outputs) for r in rows] == [
            (ExecutionStatus.RUNNING, "taker", 2, None)
        ] * 3
        assert [r.lease_token for r in rows] == [taker[i][1] for i in range(3)]
        unchanged = await store.get_batch(batch.id)
        assert (unchanged.completed, unchanged.failed, unchanged.cancelled) == (0, 0, 0)

        assert await store.finish_executions(finishing(taker)) == [True, True, True]
        assert (await store.get_batch(batch.id)).completed == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"]
)
async def test_a_signalled_process_group_of_a_multi_process_batch_leaves_nothing_running(
    tmp_path: Path, signum: int, code: int
) -> None:
    # a service manager (systemd, docker stop) or Ctrl-C signals every process of the group
    url = f"sqlite:///{tmp_path / 'dspex.db'}"
    async with open_store(url, auto_upgrade=True):
        pass
    job = await _job(url, tmp_path, total=400, latency_ms=50)
    process = job.spawn("--workers", "2", group=True)
    try:
        batch_id = await _poll_batch(url, process, _completed_at_least(16), limit=60.0)
        os.killpg(process.pid, signum)
        sent = time.monotonic()
        _, err = process.communicate(timeout=GRACE_S)
        assert time.monotonic() - sent < GRACE_S
    finally:
        if process.poll() is None:
            _kill_group(process)
    assert process.returncode == code, err
    assert "Traceback" not in err

    rows = await _rows(url, batch_id)
    states = Counter(r.status for r in rows)
    assert states[ExecutionStatus.RUNNING] == 0
    assert states[ExecutionStatus.CANCELLED] > 0
    async with open_store(url) as store:
        batch = await store.get_batch(batch_id)
    assert batch.status is BatchStatus.CANCELLED
    assert batch.cancelled == states[ExecutionStatus.CANCELLED]


def test_sigterm_cancels_an_in_process_batch_command_and_exits_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from dspex.cli import app

    db = tmp_path / "dspex.db"
    url = f"sqlite:///{db}"

    async def prepare() -> None:
        async with open_store(url, auto_upgrade=True):
            pass
        await _job(url, tmp_path, total=120, latency_ms=60)

    asyncio.run(prepare())
    monkeypatch.chdir(tmp_path)
    returned = threading.Event()
    sent = threading.Event()

    def terminate_once_items_complete() -> None:
        # this thread watches the database, then signals the process as a service manager would
        deadline = time.monotonic() + LIMIT_S
        with contextlib.closing(sqlite3.connect(db, timeout=5.0)) as conn:
            while time.monotonic() < deadline and not returned.is_set():
                with contextlib.suppress(sqlite3.OperationalError):  # tables not created yet
                    (done,) = conn.execute(
                        "SELECT count(*) FROM executions WHERE status = 'completed'"
                    ).fetchone()
                    if done >= 8:
                        sent.set()
                        os.kill(os.getpid(), signal.SIGTERM)
                        return
                time.sleep(0.02)

    # never let a late signal end the test run itself
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    killer = threading.Thread(target=terminate_once_items_complete, daemon=True)
    killer.start()
    try:
        result = CliRunner().invoke(
            app,
            [
                *("batch", "echo", "items.jsonl", "--database-url", url),
                *("--concurrency", "8", "--validate", "per_item", "--json"),
            ],
        )
    finally:
        returned.set()
        killer.join()
        signal.signal(signal.SIGTERM, previous)
    assert sent.is_set()
    assert result.exit_code == 143, result.output

    async def states() -> tuple[Counter[ExecutionStatus], BatchStatus]:
        async with open_store(url) as store:
            (batch,) = await store.list_batches()
            rows = await batch_executions(store, batch.id)
        return Counter(r.status for r in rows), batch.status

    counts, status = asyncio.run(states())
    assert counts[ExecutionStatus.RUNNING] == 0
    assert counts[ExecutionStatus.CANCELLED] > 0
    assert status is BatchStatus.CANCELLED

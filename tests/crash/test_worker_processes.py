"""Worker processes never outlive their batch: real ``dspex batch --workers 2`` processes, killed.

- ``kill -9`` of the parent: the worker server and both workers notice (the parent's lifeline
  pipe reaches end of file) and are gone within seconds, their running items recorded
  ``cancelled``, nothing completed after the kill; ``--resume`` then completes the batch with
  every index exactly once.
- ``kill -9`` of one worker: the parent records its running items ``cancelled`` and a new
  worker takes its chunks over; the batch completes with every index exactly once.
- The deadline and ``max_errors`` hold in every worker on its own: with the parent stopped
  (SIGSTOP), the workers still stop when the batch's time is up or too many items failed.

These tests wait on other processes, so they watch real time; each wait returns as soon as its
condition holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from tests.crash._support import postgres_database
from tests.support.store_reads import batch_executions

import dspex
from dspex.records import BatchStatus, ExecutionRecord, ExecutionStatus
from dspex.store import open_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="worker processes need os.fork"),
]

ECHO: dict[str, Any] = {
    "name": "echo",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}

LIMIT_S = 60.0
GONE_S = 5.0  # workers must stop within 2 s of their parent's death; this leaves room for load
WORKER = re.compile(r"/(\d+)@(\d+)$")
# Chunks of 200 items: the worker that starts first claims a few chunks ahead of its queue
# (about five at concurrency 8), so this many leave some for the other one.
CHUNKS_FOR_TWO = 1600


def _configure(cwd: Path, **mock: object) -> None:
    lines = ["[backends.default]", 'kind = "mock"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in mock.items()]
    (cwd / "dspex.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


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


async def _setup(tmp_path: Path, total: int, *, url: str | None = None, **mock: object) -> str:
    if url is None:
        url = f"sqlite:///{tmp_path / 'dspex.db'}"
        async with open_store(url, auto_upgrade=True):
            pass
    _configure(tmp_path, **mock)
    lines = [json.dumps({"question": f"q{i}"}) for i in range(total)]
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    async with dspex.Runtime.open(url, cwd=tmp_path) as rt:
        await rt.register(ECHO)
        assert (await rt.initialize("echo")).status == "ready"
    return url


def _spawn(cwd: Path, url: str, *args: str) -> subprocess.Popen[str]:
    """``dspex batch`` with two workers, in a process group of its own (parent, worker server
    and workers), so that the test can see and clean up every process it started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    command = [sys.executable, "-m", "dspex", "batch", "echo", "items.jsonl", "--out", "out.jsonl"]
    command += ["--database-url", url, "--concurrency", "8", "--workers", "2", "--json", *args]
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _group(pgid: int) -> set[int]:
    """The live (not zombie) processes of a process group."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux: ask the kernel about the group
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return set()
        return {pgid}
    members = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(group) == pgid and state != "Z":
            members.add(int(entry.name))
    return members


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait(condition: Callable[[], Any], limit: float, what: str) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError(f"timed out after {limit:g}s waiting for {what}")


@contextmanager
def _cleaned_up(process: subprocess.Popen[str]) -> Iterator[None]:
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.communicate(timeout=LIMIT_S)


async def _rows(url: str) -> tuple[str, list[ExecutionRecord]]:
    async with open_store(url) as store:
        batches = await store.list_batches()
        if not batches:
            return "", []
        return batches[0].id, await batch_executions(store, batches[0].id)


async def _poll(
    url: str, process: subprocess.Popen[str], enough: Callable[[list[ExecutionRecord]], bool]
) -> tuple[str, list[ExecutionRecord]]:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        batch_id, rows = await _rows(url)
        if rows and enough(rows):
            return batch_id, rows
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"dspex batch exited early ({process.returncode}): {err}{out}")
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for the batch")


def _workers(rows: list[ExecutionRecord]) -> dict[int, set[int]]:
    """The pids of the worker processes seen in the rows, by share number."""
    found: dict[int, set[int]] = {}
    for row in rows:
        match = WORKER.search(row.worker_id or "")
        if match:
            found.setdefault(int(match[1]), set()).add(int(match[2]))
    return found


def _both_running(rows: list[ExecutionRecord]) -> bool:
    running = [r for r in rows if r.status is ExecutionStatus.RUNNING]
    return len(_workers(running)) == 2


async def _assert_every_index_completed_once(url: str, batch_id: str, total: int) -> None:
    async with open_store(url) as store:
        batch = await store.get_batch(batch_id)
        rows = await batch_executions(store, batch_id)
    assert sorted(r.batch_index for r in rows if r.batch_index is not None) == list(range(total))
    assert [r.status for r in rows] == [ExecutionStatus.COMPLETED] * total
    assert all(r.lease_token is None for r in rows)
    assert batch.status is BatchStatus.COMPLETED
    assert (batch.completed, batch.failed, batch.cancelled) == (total, 0, 0)


def _out_lines(cwd: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (cwd / "out.jsonl").read_text().splitlines()]


async def test_killing_the_parent_stops_its_workers_and_server_at_once_and_resume_completes(
    database: str, tmp_path: Path
) -> None:
    total = CHUNKS_FOR_TWO
    url = await _setup(
        tmp_path, total, url=database, latency_ms=60_000
    )  # nothing finishes by itself
    process = _spawn(tmp_path, url)
    with _cleaned_up(process):
        batch_id, _ = await _poll(url, process, _both_running)
        members = _group(process.pid)
        assert len(members) >= 4  # the parent, the worker server and two workers

        process.kill()
        process.communicate(timeout=LIMIT_S)
        assert process.returncode == -signal.SIGKILL
        _wait(lambda: not _group(process.pid), GONE_S, "the workers and their server to exit")

    _, rows = await _rows(url)
    states = Counter(r.status for r in rows)
    # the workers recorded what they were running as cancelled before they went
    assert states[ExecutionStatus.RUNNING] == 0
    assert states[ExecutionStatus.COMPLETED] == 0
    assert states[ExecutionStatus.CANCELLED] > 0

    _configure(tmp_path, latency_ms=1)
    resumed = _spawn(tmp_path, url, "--resume", batch_id)
    with _cleaned_up(resumed):
        out, err = resumed.communicate(timeout=LIMIT_S)
    assert resumed.returncode == 0, err
    assert json.loads(out)["status"] == "completed"
    await _assert_every_index_completed_once(url, batch_id, total)
    assert [line["index"] for line in _out_lines(tmp_path)] == list(range(total))


async def test_a_killed_worker_is_replaced_and_its_batch_completes_with_every_index_once(
    database: str, tmp_path: Path
) -> None:
    total = CHUNKS_FOR_TWO
    url = await _setup(tmp_path, total, url=database, latency_ms=20)
    process = _spawn(tmp_path, url)
    with _cleaned_up(process):

        def second_worker_busy(rows: list[ExecutionRecord]) -> bool:
            done = [r for r in rows if r.status is ExecutionStatus.COMPLETED]
            return len([r for r in done if "/1@" in (r.worker_id or "")]) >= 8

        batch_id, rows = await _poll(url, process, second_worker_busy)
        (victim,) = _workers(rows)[1]
        os.kill(victim, signal.SIGKILL)
        out, err = process.communicate(timeout=LIMIT_S)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    result = json.loads(out)
    assert result["status"] == "completed"
    assert result["stats"]["completed"] == total

    await _assert_every_index_completed_once(url, batch_id, total)
    _, rows = await _rows(url)
    (replacement,) = _workers(rows)[1] - {victim}  # under the same share of the concurrency
    # what it had claimed and not finished was recorded cancelled and claimed again at once
    again = [r for r in rows if r.attempts == 2]
    assert again
    assert all(r.attempts <= 2 for r in rows)
    assert {r.worker_id for r in again} <= {
        r.worker_id
        for r in rows
        if f"@{replacement}" in (r.worker_id or "") or "/0@" in (r.worker_id or "")
    }
    assert {r.worker_id for r in rows if r.attempts == 1 and f"@{victim}" in (r.worker_id or "")}
    assert [line["index"] for line in _out_lines(tmp_path)] == list(range(total))


async def _stop_parent_once_both_workers_run(url: str, process: subprocess.Popen[str]) -> set[int]:
    _, rows = await _poll(url, process, _both_running)
    process.send_signal(signal.SIGSTOP)  # the parent cannot tell anyone to stop any more
    return {pid for pids in _workers(rows).values() for pid in pids}


async def test_the_deadline_stops_every_worker_even_when_the_parent_cannot(
    tmp_path: Path,
) -> None:
    total = CHUNKS_FOR_TWO
    url = await _setup(tmp_path, total, latency_ms=60_000)
    process = _spawn(tmp_path, url, "--deadline", "3")
    with _cleaned_up(process):
        workers = await _stop_parent_once_both_workers_run(url, process)
        _wait(
            lambda: not any(_alive(pid) for pid in workers),
            3 + LIMIT_S,
            "the workers to stop at the deadline",
        )
        _, rows = await _rows(url)
        process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=LIMIT_S)
    states = Counter(r.status for r in rows)
    assert states[ExecutionStatus.RUNNING] == 0
    assert states[ExecutionStatus.CANCELLED] > 0
    assert process.returncode == 1, err
    result = json.loads(out)
    assert (result["status"], result["stop_reason"]) == ("cancelled", "deadline")


async def test_max_errors_stops_every_worker_even_when_the_parent_cannot(tmp_path: Path) -> None:
    total = CHUNKS_FOR_TWO
    url = await _setup(tmp_path, total, latency_ms=1000, permanent_failure_rate=1.0)
    process = _spawn(tmp_path, url, "--max-errors", "3", "--max-retries", "0")
    with _cleaned_up(process):
        workers = await _stop_parent_once_both_workers_run(url, process)
        _wait(
            lambda: not any(_alive(pid) for pid in workers),
            LIMIT_S,
            "the workers to stop after too many failures",
        )
        _, rows = await _rows(url)
        process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=LIMIT_S)
    states = Counter(r.status for r in rows)
    assert states[ExecutionStatus.RUNNING] == 0
    # each worker stops after its own fourth failure (plus what was running with it), long
    # before the 400 items could all have failed
    assert 4 <= states[ExecutionStatus.FAILED] <= 2 * (4 + 4)
    assert process.returncode == 1, err
    assert "batch_max_errors" in out + err

"""Cancelling an execution from another runtime sharing its store: the runtime running it sees
the request on its next heartbeat and records the run ``cancelled``.

Runs in fake time (looptime) on the in-memory store, whose clock follows the event loop: a lease
really lapses after its seconds of loop time, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from tests.runtime._support import make_runtime, ready

from dspex.actions._heartbeat import Heartbeat
from dspex.backends.mock import MockBackend
from dspex.errors import ExecutionCancelledError, ExecutionFinishedError, NotFoundError
from dspex.records import ExecutionFilter, ExecutionStatus
from dspex.store import MemoryStore

pytestmark = pytest.mark.looptime

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = 30.0


def loop_store() -> MemoryStore:
    loop = asyncio.get_running_loop()
    return MemoryStore(clock=lambda: EPOCH + timedelta(seconds=loop.time()))


def slow() -> dict[str, MockBackend]:
    return {"default": MockBackend("default", latency_ms=600_000)}


def fast() -> dict[str, MockBackend]:
    return {"default": MockBackend("default")}


async def _running_id(store: MemoryStore) -> str:
    page = await store.list_executions(ExecutionFilter(statuses=[ExecutionStatus.RUNNING]))
    assert len(page.items) == 1
    return page.items[0].id


async def test_a_cancel_from_another_runtime_stops_the_run_at_its_next_heartbeat() -> None:
    store = loop_store()
    async with (
        make_runtime(store, slow(), worker_id="a", lease_seconds=LEASE) as a,
        make_runtime(store, fast(), worker_id="b", lease_seconds=LEASE) as b,
    ):
        await ready(a)
        run = asyncio.create_task(a.execute("qa", {"question": "slow?"}))
        await asyncio.sleep(25)  # past the first heartbeat: the run is held and renewed
        execution_id = await _running_id(store)
        asked = await b.cancel_execution(execution_id)
        asked_at = asyncio.get_running_loop().time()
        assert (asked.status, asked.worker_id) == ("running", "a")

        result = await run  # a result, not an exception: the caller asked for nothing
        assert asyncio.get_running_loop().time() - asked_at <= LEASE / 3 + 1.0
        assert result.status == "cancelled"
        assert result.error is not None
        assert result.error.code == "cancelled"
        assert [(s.module, s.status) for s in result.steps] == [("answer", "cancelled")]
        record = await store.get_execution(execution_id)
        assert (record.status, record.lease_token) == (ExecutionStatus.CANCELLED, None)
        assert record.cancel_requested_at is not None
        assert (await store.get_program("qa")).execution_count == 0

        # asked again: what it now is; a completed one is refused
        assert (await b.cancel_execution(execution_id)).status == "cancelled"
        done = await b.execute("qa", {"question": "quick?"})
        with pytest.raises(ExecutionFinishedError) as refused:
            await b.cancel_execution(done.execution_id)
        assert refused.value.status == "completed"
        with pytest.raises(NotFoundError):
            await b.cancel_execution("nope")

        # asked while it ran, but it completed before its holder saw the request
        started = await store.start_execution(
            "qa", 1, {"question": "raced?"}, worker_id="c", lease_seconds=LEASE
        )
        assert (await b.cancel_execution(started.id)).status == "running"
        assert started.lease_token is not None
        await store.finish_execution(
            started.id, started.lease_token, ExecutionStatus.COMPLETED, outputs={"answer": "a"}
        )
        with pytest.raises(ExecutionFinishedError):
            await b.cancel_execution(started.id)


async def test_cancelling_the_caller_still_raises_cancelled_error() -> None:
    store = loop_store()
    async with make_runtime(store, slow(), lease_seconds=LEASE) as rt:
        await ready(rt)
        run = asyncio.create_task(rt.execute("qa", {"question": "slow?"}))
        await asyncio.sleep(15)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        page = await store.list_executions()
        assert [e.status for e in page.items] == [ExecutionStatus.CANCELLED]
        assert page.items[0].cancel_requested_at is None


async def test_a_heartbeat_told_of_a_cancel_stops_beating_and_calls_on_cancel() -> None:
    beats: list[int] = []
    cancels: list[str] = []
    gate = asyncio.Event()

    async def asked() -> None:
        beats.append(len(beats) + 1)
        raise ExecutionCancelledError("asked to cancel")

    heartbeat = Heartbeat(asked, 3.0, "execution e-1", lambda: cancels.append("e-1"))
    await asyncio.sleep(5)  # room for several beats: the first reported the cancel
    await heartbeat.stop()
    assert (beats, cancels) == ([1], ["e-1"])

    plain = Heartbeat(asked, 3.0, "execution e-2")  # nobody to tell: the beats just stop
    await asyncio.sleep(5)
    await plain.stop()
    assert beats == [1, 2]

    async def slow_beat() -> None:
        gate.set()
        await asyncio.sleep(1)
        raise ExecutionCancelledError("asked to cancel")

    late = Heartbeat(slow_beat, 3.0, "execution e-3", lambda: cancels.append("e-3"))
    await gate.wait()
    await late.stop()  # the work ended while the beat was in flight: nothing to cancel
    assert cancels == ["e-1"]

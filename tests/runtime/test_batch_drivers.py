"""Batches under a driver lease, across runtimes sharing one store: a cancel requested by one
stops the batch another runs, and a recoverable batch whose driver died is taken over by exactly
one of them and completed, every item exactly once.

Runs in fake time (looptime) on the in-memory store, whose clock follows the event loop: a lease
really lapses after its seconds of loop time, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.runtime._support import make_runtime, ready
from tests.support.store_reads import batch_executions

from dspex.backends.mock import MockBackend
from dspex.errors import BatchError, NotFoundError, ProgramStateError
from dspex.records import BatchStatus, ExecutionStatus, FinishRequest
from dspex.store import MemoryStore

pytestmark = pytest.mark.looptime

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
LEASE = 30.0


def loop_store() -> MemoryStore:
    loop = asyncio.get_running_loop()
    return MemoryStore(clock=lambda: EPOCH + timedelta(seconds=loop.time()))


def items(n: int) -> list[dict[str, Any]]:
    return [{"question": f"q{i}"} for i in range(n)]


def slow_backends() -> dict[str, MockBackend]:
    return {"default": MockBackend("default", latency_ms=1000)}


async def _assert_completed_once(store: MemoryStore, batch_id: str, total: int) -> list[int]:
    rows = await batch_executions(store, batch_id)
    assert [r.batch_index for r in rows] == list(range(total))
    assert Counter(r.status for r in rows) == {ExecutionStatus.COMPLETED: total}
    batch = await store.get_batch(batch_id)
    assert (batch.status, batch.completed, batch.driver) == (BatchStatus.COMPLETED, total, None)
    return [r.attempts for r in rows]


async def test_a_cancel_from_another_runtime_stops_the_batch_within_a_renewal() -> None:
    store = loop_store()
    async with (
        make_runtime(store, slow_backends(), worker_id="a", lease_seconds=LEASE) as a,
        make_runtime(store, slow_backends(), worker_id="b", lease_seconds=LEASE) as b,
    ):
        await ready(a)
        handle = await a.start_batch("qa", items(60), max_concurrency=2, recoverable=True)
        await asyncio.sleep(2.5)
        info = await b.cancel_batch(handle.batch_id)
        asked_at = asyncio.get_running_loop().time()
        assert (info.status, info.cancel_requested) == ("running", True)
        assert info.driver is not None
        assert info.driver.startswith("a:")

        result = await handle.task
        # the driver saw the request at its next renewal, a third of a lease at most
        assert asyncio.get_running_loop().time() - asked_at <= LEASE / 3 + 1.0
        assert (result.status, result.stop_reason) == ("cancelled", "cancelled")
        assert 0 < result.stats.completed < 60
        batch = await store.get_batch(handle.batch_id)
        assert (batch.status, batch.driver) == (BatchStatus.CANCELLED, None)
        assert "running" not in await store.batch_item_states(handle.batch_id)

        resumed = await b.run_batch("qa", items(60), resume=handle.batch_id, max_concurrency=8)
        assert resumed.status == "completed"
        assert not (await store.get_batch(handle.batch_id)).cancel_requested
        await _assert_completed_once(store, handle.batch_id, 60)


async def test_cancelling_the_caller_of_a_batch_still_raises_cancelled_error() -> None:
    store = loop_store()
    async with make_runtime(store, slow_backends(), lease_seconds=LEASE) as rt:
        await ready(rt)
        handle = await rt.start_batch("qa", items(6), max_concurrency=2, recoverable=True)
        await asyncio.sleep(1.5)
        handle.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await handle.task
        batch = await store.get_batch(handle.batch_id)
        assert (batch.status, batch.driver) == (BatchStatus.CANCELLED, None)


async def test_a_cancel_of_a_batch_nobody_runs_cancels_it_at_once() -> None:
    store = loop_store()
    async with make_runtime(store) as rt:
        await ready(rt)
        batch = await store.create_batch("qa", 1, {}, total=1)
        await store.set_batch_status(batch.id, BatchStatus.RUNNING)
        info = await rt.cancel_batch(batch.id)
        assert (info.status, info.cancel_requested, info.finished_at is not None) == (
            "cancelled",
            True,
            True,
        )


async def test_a_cancel_of_a_finished_or_missing_batch_is_refused() -> None:
    store = loop_store()
    async with make_runtime(store) as rt:
        await ready(rt)
        done = await rt.run_batch("qa", items(2))
        with pytest.raises(BatchError, match="already finished"):
            await rt.cancel_batch(done.batch_id)
        with pytest.raises(NotFoundError):
            await rt.cancel_batch("nope")


async def _dead_driver_batch(store: MemoryStore, total: int, *, stored: bool = True) -> str:
    """A batch left the way a killed replica leaves it: recorded items (``stored``), a few
    completed, some running under the dead process's item lease, its driver lease lapsing."""
    config = {"inputs": "stored" if stored else None, "max_concurrency": 4, "max_retries": 0}
    batch = await store.create_batch("qa", 1, config, total=total)
    await store.add_batch_items(batch.id, "qa", 1, list(enumerate(items(total))))
    await store.take_batch_driver(batch.id, "dead", LEASE)
    await store.set_batch_status(batch.id, BatchStatus.RUNNING)
    claimed = await store.claim_batch_items(
        batch.id, range(6), worker_id="dead", lease_seconds=LEASE
    )
    done = [
        FinishRequest(eid, token, ExecutionStatus.COMPLETED, outputs={"answer": "a"})
        for index, (eid, token) in claimed.items()
        if index < 3
    ]
    await store.finish_executions(done)
    return batch.id


async def test_a_batch_whose_driver_died_is_taken_over_by_exactly_one_runtime() -> None:
    store = loop_store()
    async with (
        make_runtime(store, worker_id="b", lease_seconds=LEASE) as b,
        make_runtime(store, worker_id="c", lease_seconds=LEASE) as c,
    ):
        await ready(b)
        batch_id = await _dead_driver_batch(store, 12)
        assert await b.take_over_batch() is None  # its driver's lease still holds
        await asyncio.sleep(LEASE + 1)

        handles = await asyncio.gather(b.take_over_batch(), c.take_over_batch())
        taken = [h for h in handles if h is not None]
        assert len(taken) == 1
        assert (taken[0].batch_id, taken[0].program) == (batch_id, "qa")
        assert await b.take_over_batch() is None
        result = await taken[0].task
        assert (result.status, result.stats.skipped) == ("completed", 3)

        attempts = await _assert_completed_once(store, batch_id, 12)
        # the dead driver's running items ran again; its completed ones did not
        assert attempts == [1, 1, 1, 2, 2, 2] + [1] * 6


async def test_a_batch_not_run_recoverable_is_left_to_its_resume_command() -> None:
    store = loop_store()
    async with make_runtime(store, lease_seconds=LEASE) as rt:
        await ready(rt)
        batch_id = await _dead_driver_batch(store, 8, stored=False)
        await asyncio.sleep(LEASE + 1)
        assert await rt.take_over_batch() is None
        batch = await store.get_batch(batch_id)
        assert (batch.status, batch.driver) == (BatchStatus.RUNNING, "dead")


async def test_a_taken_over_batch_whose_program_is_not_ready_is_failed() -> None:
    store = loop_store()
    async with make_runtime(store, lease_seconds=LEASE) as rt:
        await ready(rt)
        batch_id = await _dead_driver_batch(store, 8)
        await rt.archive("qa")
        await asyncio.sleep(LEASE + 1)
        with pytest.raises(ProgramStateError):
            await rt.take_over_batch()
        assert (await store.get_batch(batch_id)).status is BatchStatus.FAILED
        assert await rt.take_over_batch() is None


async def test_a_recoverable_batch_records_every_item_before_any_runs() -> None:
    store = loop_store()
    async with make_runtime(store, slow_backends()) as rt:
        await ready(rt)
        raw: list[Any] = [*items(3), ["not", "an", "object"]]
        handle = await rt.start_batch(
            "qa", raw, max_concurrency=1, validate="per_item", recoverable=True
        )
        rows = await batch_executions(store, handle.batch_id)
        assert [r.inputs for r in rows] == [*items(3), {}]
        assert (await store.get_batch(handle.batch_id)).config["inputs"] == "stored"
        result = await handle.task
        assert (result.stats.completed, result.stats.failed) == (3, 1)


async def test_a_batch_whose_recording_was_cut_short_runs_every_item_on_resume() -> None:
    store = loop_store()
    async with make_runtime(store) as rt:
        await ready(rt)
        batch = await store.create_batch("qa", 1, {"inputs": "stored"}, total=6)
        await store.add_batch_items(batch.id, "qa", 1, list(enumerate(items(3))))
        result = await rt.run_batch("qa", items(6), resume=batch.id)
        assert (result.status, result.stats.completed) == ("completed", 6)
        await _assert_completed_once(store, batch.id, 6)

"""Timeouts, cancellation, heartbeats and leases of recorded executions.

Runs in fake time (looptime) on the in-memory store, whose clock follows the event loop: a
30-second lease really expires after 30 loop seconds, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.runtime._support import QA, make_runtime, ready
from tests.store._clock import FakeClock

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import LeaseLostError
from dspex.records import ExecutionFilter, ExecutionStatus
from dspex.store import MemoryStore

pytestmark = pytest.mark.looptime

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def loop_store() -> MemoryStore:
    loop = asyncio.get_running_loop()
    return MemoryStore(clock=lambda: EPOCH + timedelta(seconds=loop.time()))


async def running_id(store: MemoryStore) -> str:
    page = await store.list_executions(ExecutionFilter(statuses=[ExecutionStatus.RUNNING]))
    assert len(page.items) == 1
    return page.items[0].id


async def test_timeout_fails_the_execution_with_code_timeout() -> None:
    backends = {"default": MockBackend("default", latency_ms=10_000)}
    async with make_runtime(loop_store(), backends) as rt:
        await ready(rt)
        result = await rt.execute("qa", {"question": "why?"}, timeout=2.0)
        assert result.status == "failed"
        assert result.error is not None
        assert result.error.code == "timeout"
        assert "2s" in result.error.message
        assert result.duration_ms == pytest.approx(2000.0)
        assert [(s.module, s.status) for s in result.steps] == [("answer", "cancelled")]
        detail = await rt.get_execution(result.execution_id)
        assert (detail.status, detail.error and detail.error.code) == ("failed", "timeout")
        assert (await rt.get_program("qa")).failure_count == 1


async def test_a_run_within_its_timeout_completes() -> None:
    backends = {"default": MockBackend("default", latency_ms=1_000)}
    async with make_runtime(loop_store(), backends) as rt:
        await ready(rt)
        result = await rt.execute("qa", {"question": "why?"}, timeout=2.0)
        assert result.status == "completed"
        assert result.duration_ms == pytest.approx(1000.0)


async def test_cancellation_is_recorded_then_re_raised() -> None:
    backends = {"default": MockBackend("default", latency_ms=10_000)}
    store = loop_store()
    async with make_runtime(store, backends) as rt:
        await ready(rt)
        task = asyncio.create_task(rt.execute("qa", {"question": "why?"}))
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        (record,) = (await store.list_executions()).items
        assert record.status is ExecutionStatus.CANCELLED
        assert record.error_code == "cancelled"
        assert record.lease_token is None
        # a cancellation says nothing about the program's health
        assert (await rt.get_program("qa")).execution_count == 0


async def test_heartbeat_keeps_the_lease_of_a_long_run() -> None:
    store = loop_store()
    reaped: list[int] = []

    async def long_call(request: PredictRequest) -> dict[str, Any]:
        await asyncio.sleep(10.0)  # far past the 3-second lease
        await running_id(store)
        reaped.append((await store.reap_expired_leases()).total)
        return {"answer": "done"}

    backends = {"default": MockBackend("default", handler=long_call)}
    async with make_runtime(store, backends, lease_seconds=3.0) as rt:
        await ready(rt)
        result = await rt.execute("qa", {"question": "why?"})
    assert result.status == "completed"
    assert reaped == [0]  # the reaper found its lease alive


async def test_a_finish_with_a_stale_lease_token_changes_nothing() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)

    async def handler(request: PredictRequest) -> dict[str, Any]:
        # This worker stalls past its lease without the loop running (so the heartbeat cannot
        # beat), and the reaper fails the execution meanwhile (once its record, written while
        # the run begins, is there).
        await asyncio.sleep(0)
        clock.advance(31.0)
        assert (await store.reap_expired_leases()).failed == [await running_id(store)]
        return {"answer": "late"}

    async with make_runtime(store, {"default": MockBackend("default", handler=handler)}) as rt:
        await ready(rt)
        with pytest.raises(LeaseLostError):
            await rt.execute("qa", {"question": "why?"})
        (record,) = (await store.list_executions()).items
        assert (record.status, record.error_code) == (ExecutionStatus.FAILED, "lease_expired")
        assert record.outputs is None
        assert await store.list_steps(record.id) == []
        program = await store.get_program("qa")
        assert (program.success_count, program.failure_count) == (0, 1)  # the reaper's count


async def test_stale_token_finish_is_refused_by_the_store() -> None:
    async with make_runtime(loop_store()) as rt:
        await ready(rt, QA)
        store = rt.store
        started = await store.start_execution("qa", 1, {}, worker_id="w-1", lease_seconds=5.0)
        await asyncio.sleep(6.0)
        assert (await store.reap_expired_leases()).failed == [started.id]
        assert started.lease_token is not None
        with pytest.raises(LeaseLostError):
            await store.finish_execution(started.id, started.lease_token, ExecutionStatus.COMPLETED)
        assert (await store.get_execution(started.id)).error_code == "lease_expired"

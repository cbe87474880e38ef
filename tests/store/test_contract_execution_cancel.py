"""The ExecutionStore contract for cancelling an execution from any process (every store)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store._clock import FakeClock

from dspex.errors import ExecutionCancelledError, LeaseLostError, NotFoundError
from dspex.records import ExecutionStatus, ProgramRecord
from dspex.store import Store


async def _running(store: Store, lease_seconds: float = 30.0) -> tuple[str, str]:
    started = await store.start_execution(
        "qa", 1, {"question": "why?"}, worker_id="worker-1", lease_seconds=lease_seconds
    )
    assert started.lease_token is not None
    return started.id, started.lease_token


async def test_a_held_execution_is_asked_and_its_heartbeat_reports_it(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    expires = await store.heartbeat(execution_id, token, 30)
    assert (await store.get_execution(execution_id)).cancel_requested_at is None
    clock.advance(5)
    asked = await store.request_execution_cancel(execution_id)
    assert asked.status is ExecutionStatus.RUNNING
    assert asked.cancel_requested_at is not None
    assert asked.cancel_requested_at > expires - timedelta(seconds=30)
    assert asked.lease_token == token
    clock.advance(5)
    with pytest.raises(ExecutionCancelledError):
        await store.heartbeat(execution_id, token, 30)
    # the beat renewed the lease all the same, so the holder can still record the outcome
    renewed = (await store.get_execution(execution_id)).lease_expires_at
    assert renewed is not None
    assert renewed >= expires + timedelta(seconds=10)
    done = await store.finish_execution(
        execution_id, token, ExecutionStatus.CANCELLED, error_code="cancelled"
    )
    assert done.status is ExecutionStatus.CANCELLED
    assert done.cancel_requested_at is not None
    assert (await store.get_program("qa")).execution_count == 0


async def test_an_execution_whose_lease_lapsed_is_cancelled_at_once(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    clock.advance(31)
    cancelled = await store.request_execution_cancel(execution_id)
    assert cancelled.status is ExecutionStatus.CANCELLED
    assert cancelled.error_code == "cancelled"
    assert cancelled.finished_at is not None
    assert cancelled.cancel_requested_at == cancelled.finished_at
    assert cancelled.lease_token is None
    assert cancelled.lease_expires_at is None
    assert await store.get_execution(execution_id) == cancelled
    with pytest.raises(LeaseLostError):
        await store.heartbeat(execution_id, token, 30)
    with pytest.raises(LeaseLostError):
        await store.finish_execution(execution_id, token, ExecutionStatus.COMPLETED)


async def test_a_finished_execution_is_returned_unchanged(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    done = await store.finish_execution(
        execution_id, token, ExecutionStatus.COMPLETED, outputs={"answer": "42"}
    )
    clock.advance(1)
    assert await store.request_execution_cancel(execution_id) == done
    assert (await store.get_execution(execution_id)).cancel_requested_at is None


async def test_cancelling_a_missing_execution_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.request_execution_cancel("nope")

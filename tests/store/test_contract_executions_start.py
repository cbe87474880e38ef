"""The ExecutionStore contract for ``start_execution``: create and claim in one step (every
store)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store._clock import FakeClock

from dspex.errors import NotFoundError, ProgramStateError, ValidationError
from dspex.records import ExecutionStatus, ProgramRecord, ProgramStatus
from dspex.store import Store


async def test_started_execution_is_running_under_a_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    started = await store.start_execution(
        "qa", 1, {"question": "why?"}, worker_id="w-1", lease_seconds=30.0
    )
    assert started.status is ExecutionStatus.RUNNING
    assert started.worker_id == "w-1"
    assert started.attempts == 1
    assert started.lease_token
    assert started.lease_expires_at is not None
    assert started.started_at is not None
    assert started.lease_expires_at - started.started_at == timedelta(seconds=30)


async def test_started_execution_reads_back_as_returned(
    store: Store, program: ProgramRecord
) -> None:
    started = await store.start_execution(
        "qa", 1, {"question": "why?"}, worker_id="w-1", lease_seconds=30.0, batch_index=None
    )
    assert await store.get_execution(started.id) == started


async def test_started_execution_round_trips_inputs_through_json(
    store: Store, program: ProgramRecord
) -> None:
    started = await store.start_execution(
        "qa", 1, {"pair": (1, 2)}, worker_id="w-1", lease_seconds=30.0
    )
    assert started.inputs == {"pair": [1, 2]}
    assert (await store.get_execution(started.id)).inputs == {"pair": [1, 2]}


async def test_started_execution_finishes_with_its_lease_token(
    store: Store, program: ProgramRecord
) -> None:
    started = await store.start_execution("qa", 1, {}, worker_id="w-1", lease_seconds=30.0)
    assert started.lease_token is not None
    done = await store.finish_execution(
        started.id, started.lease_token, ExecutionStatus.COMPLETED, duration_ms=3.0
    )
    assert done.status is ExecutionStatus.COMPLETED
    assert (await store.get_program("qa")).success_count == 1


async def test_starting_an_execution_of_an_unknown_program_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.start_execution("qa", 9, {}, worker_id="w-1", lease_seconds=30.0)
    assert (await store.list_executions()).items == []


async def test_starting_with_a_non_positive_lease_is_refused(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(ValidationError):
        await store.start_execution("qa", 1, {}, worker_id="w-1", lease_seconds=0)


async def test_require_ready_refuses_a_version_that_is_not_ready(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(ProgramStateError, match="draft") as caught:
        await store.start_execution(
            "qa", 1, {}, worker_id="w-1", lease_seconds=30.0, require_ready=True
        )
    assert caught.value.status == "draft"
    assert (await store.list_executions()).items == []


async def test_require_ready_starts_a_ready_version(store: Store, program: ProgramRecord) -> None:
    await store.set_program_status("qa", 1, ProgramStatus.INITIALIZING)
    await store.set_program_status("qa", 1, ProgramStatus.READY)
    started = await store.start_execution(
        "qa", 1, {}, worker_id="w-1", lease_seconds=30.0, require_ready=True, require_latest=True
    )
    assert started.status is ExecutionStatus.RUNNING
    assert (await store.get_execution(started.id)).lease_token == started.lease_token


async def test_require_latest_refuses_a_superseded_version(
    store: Store, program: ProgramRecord
) -> None:
    await store.put_program("qa", {"modules": ["answer", "check"]}, "hash-2")
    with pytest.raises(ProgramStateError, match="v2"):
        await store.start_execution(
            "qa", 1, {}, worker_id="w-1", lease_seconds=30.0, require_latest=True
        )
    assert (await store.list_executions()).items == []


async def test_guarded_start_of_a_missing_version_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.start_execution(
            "qa", 7, {}, worker_id="w-1", lease_seconds=30.0, require_ready=True
        )

"""The ExecutionStore contract: executions, leases, steps, attempts, history (every store)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from tests.store._clock import FakeClock

from dspex.errors import LeaseLostError, NotFoundError, StorageError, ValidationError
from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    ExecutionFilter,
    ExecutionStatus,
    ProgramRecord,
    StepRecord,
    StepStatus,
)
from dspex.store import Store

USAGE = {"openai/gpt-4o-mini": {"prompt_tokens": 12, "completion_tokens": 5}}


def _step(module: str, clock: FakeClock, status: StepStatus = StepStatus.COMPLETED) -> StepRecord:
    start = clock()
    return StepRecord(
        module=module,
        status=status,
        started_at=start,
        ended_at=start + timedelta(milliseconds=40),
        duration_ms=40.0,
        attempts=2,
        error_code="timeout" if status is StepStatus.FAILED else None,
        error_message="took too long" if status is StepStatus.FAILED else None,
        usage=USAGE,
    )


def _attempt(module: str, number: int, outcome: AttemptOutcome) -> AttemptRecord:
    failed = outcome is AttemptOutcome.FAILED
    return AttemptRecord(
        module=module,
        attempt=number,
        backend="primary",
        outcome=outcome,
        error_code="rate_limited" if failed else None,
        http_status=429 if failed else 200,
        retry_after=1.5 if failed else None,
        prompt_tokens=12,
        completion_tokens=0 if failed else 5,
    )


async def _running(
    store: Store, lease_seconds: float = 30.0, program: str = "qa", version: int = 1, **extra: Any
) -> tuple[str, str]:
    started = await store.start_execution(
        program,
        version,
        {"question": "why?"},
        worker_id="worker-1",
        lease_seconds=lease_seconds,
        **extra,
    )
    assert started.lease_token is not None
    return started.id, started.lease_token


async def _start_with(store: Store, inputs: dict[str, Any], **extra: Any) -> str:
    started = await store.start_execution(
        "qa", 1, inputs, worker_id="worker-1", lease_seconds=30.0, **extra
    )
    return started.id


# -- creation ----------------------------------------------------------------------------------


async def test_execution_ids_are_uuid7_strings_unless_given(
    store: Store, program: ProgramRecord
) -> None:
    generated, _ = await _running(store)
    assert len(generated) == 36
    assert generated[14] == "7"
    given, _ = await _running(store, execution_id="my-id")
    assert given == "my-id"


async def test_duplicate_execution_id_raises_storage_error(
    store: Store, program: ProgramRecord
) -> None:
    await _running(store, execution_id="dup")
    with pytest.raises(StorageError):
        await _running(store, execution_id="dup")


async def test_unserialisable_inputs_raise_storage_error(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(StorageError):
        await _start_with(store, {"bad": {1, 2}})
    assert (await store.list_executions()).items == []


async def test_missing_execution_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.get_execution("nope")
    with pytest.raises(NotFoundError):
        await store.heartbeat("nope", "token", 30)
    with pytest.raises(NotFoundError):
        await store.finish_execution("nope", "token", ExecutionStatus.COMPLETED)


# -- heartbeat and conditional writes ----------------------------------------------------------


async def test_heartbeat_extends_the_lease_from_now(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    clock.advance(20)
    expires = await store.heartbeat(execution_id, token, 30)
    assert (await store.get_execution(execution_id)).lease_expires_at == expires
    clock.advance(20)  # past the first lease, inside the extended one
    assert (await store.reap_expired_leases(dry_run=True)).total == 0


async def test_heartbeat_with_a_stale_token_raises_lease_lost(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, stale = await _running(store)
    clock.advance(31)
    assert (await store.reap_expired_leases()).failed == [execution_id]
    with pytest.raises(LeaseLostError):
        await store.heartbeat(execution_id, stale, 30)


async def test_finish_with_a_stale_token_changes_nothing(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, stale = await _running(store)
    clock.advance(31)
    assert (await store.reap_expired_leases()).failed == [execution_id]  # the reaper took it
    before = await store.get_execution(execution_id)
    counted = await store.get_program("qa")
    with pytest.raises(LeaseLostError):
        await store.finish_execution(
            execution_id,
            stale,
            ExecutionStatus.FAILED,
            error_code="timeout",
            steps=[_step("answer", clock)],
            attempts=[_attempt("answer", 1, AttemptOutcome.FAILED)],
        )
    assert await store.get_execution(execution_id) == before
    assert await store.list_steps(execution_id) == []
    assert await store.list_attempts(execution_id) == []
    assert await store.get_program("qa") == counted
    assert (before.status, before.error_code, before.lease_token) == (
        ExecutionStatus.FAILED,
        "lease_expired",
        None,
    )


async def test_finish_records_results_and_releases_the_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    finished = await store.finish_execution(
        execution_id,
        token,
        ExecutionStatus.COMPLETED,
        outputs={"answer": "because", "confidence": 0.9},
        usage=USAGE,
        duration_ms=42.5,
        backend="primary",
    )
    assert finished.status is ExecutionStatus.COMPLETED
    assert finished.outputs == {"answer": "because", "confidence": 0.9}
    assert (finished.usage, finished.duration_ms, finished.backend) == (USAGE, 42.5, "primary")
    assert (finished.lease_token, finished.lease_expires_at) == (None, None)
    assert finished.finished_at is not None
    assert finished.started_at is not None
    assert finished.finished_at > finished.started_at
    assert await store.get_execution(execution_id) == finished


async def test_finish_twice_with_the_same_token_raises_lease_lost(
    store: Store, program: ProgramRecord
) -> None:
    execution_id, token = await _running(store)
    await store.finish_execution(execution_id, token, ExecutionStatus.CANCELLED)
    with pytest.raises(LeaseLostError):
        await store.finish_execution(execution_id, token, ExecutionStatus.COMPLETED)
    assert (await store.get_execution(execution_id)).status is ExecutionStatus.CANCELLED


async def test_finish_requires_a_terminal_status(store: Store, program: ProgramRecord) -> None:
    execution_id, token = await _running(store)
    with pytest.raises(ValidationError):
        await store.finish_execution(execution_id, token, ExecutionStatus.PENDING)


async def test_failed_finish_records_the_error_and_counts_a_failure(
    store: Store, program: ProgramRecord
) -> None:
    execution_id, token = await _running(store)
    failed = await store.finish_execution(
        execution_id,
        token,
        ExecutionStatus.FAILED,
        error_code="rate_limited",
        error_message="slow down",
        duration_ms=5.0,
    )
    assert (failed.error_code, failed.error_message, failed.outputs) == (
        "rate_limited",
        "slow down",
        None,
    )
    counted = await store.get_program("qa")
    assert (counted.execution_count, counted.failure_count) == (1, 1)


async def test_cancelled_executions_and_opted_out_finishes_are_not_counted(
    store: Store, program: ProgramRecord
) -> None:
    execution_id, token = await _running(store)
    await store.finish_execution(execution_id, token, ExecutionStatus.CANCELLED)
    execution_id, token = await _running(store)
    await store.finish_execution(
        execution_id, token, ExecutionStatus.COMPLETED, bump_counters=False
    )
    assert (await store.get_program("qa")).execution_count == 0


async def test_finish_stores_steps_and_attempts_in_order(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = [_step("retrieve", clock), _step("answer", clock, StepStatus.FAILED)]
    attempts = [
        _attempt("answer", 1, AttemptOutcome.FAILED),
        _attempt("answer", 2, AttemptOutcome.SUCCEEDED),
    ]
    await store.finish_execution(
        execution_id, token, ExecutionStatus.FAILED, steps=steps, attempts=attempts
    )
    stored = await store.list_steps(execution_id)
    assert [(s.module, s.status) for s in stored] == [
        ("retrieve", StepStatus.COMPLETED),
        ("answer", StepStatus.FAILED),
    ]
    assert stored[1].error_code == "timeout"
    assert stored[0].usage == USAGE
    assert all(s.execution_id == execution_id and s.id is not None for s in stored)
    assert stored[0].started_at == steps[0].started_at
    got = await store.list_attempts(execution_id)
    assert [(a.attempt, a.outcome, a.http_status) for a in got] == [
        (1, AttemptOutcome.FAILED, 429),
        (2, AttemptOutcome.SUCCEEDED, 200),
    ]
    assert (got[0].retry_after, got[1].total_tokens) == (1.5, 17)


# -- listing and history -----------------------------------------------------------------------


async def test_executions_are_listed_newest_first_and_paged_by_cursor(
    store: Store, program: ProgramRecord
) -> None:
    ids = [await _start_with(store, {"i": i}) for i in range(5)]
    first = await store.list_executions(limit=2)
    assert [e.id for e in first.items] == ids[::-1][:2]
    second = await store.list_executions(limit=2, cursor=first.next_cursor)
    third = await store.list_executions(limit=2, cursor=second.next_cursor)
    assert [e.id for e in second.items + third.items] == ids[::-1][2:]
    assert third.next_cursor is None


async def test_executions_are_filtered_by_program_version_status_batch_and_time(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    await store.put_program("qa", {"v": 2}, "hash-2")
    await store.put_program("other", {}, "o1")
    batch = await store.create_batch("qa", 1, {}, total=1)
    in_batch, _ = await _running(store, batch_id=batch.id, batch_index=0)
    cutoff = clock()
    v2, _ = await _running(store, version=2)
    await _running(store, program="other")
    execution_id, token = await _running(store)
    await store.finish_execution(execution_id, token, ExecutionStatus.FAILED)

    async def ids(**kwargs: object) -> set[str]:
        page = await store.list_executions(ExecutionFilter(**kwargs), limit=100)  # type: ignore[arg-type]
        return {e.id for e in page.items}

    assert await ids(program="qa", program_version=2) == {v2}
    assert await ids(statuses=[ExecutionStatus.FAILED]) == {execution_id}
    assert await ids(batch_id=batch.id) == {in_batch}
    assert in_batch not in await ids(created_after=cutoff)
    assert await ids(created_before=cutoff) == {in_batch}
    assert len(await ids(program="qa")) == 3


async def test_a_malformed_cursor_raises_validation_error(store: Store) -> None:
    with pytest.raises(ValidationError):
        await store.list_executions(cursor="not-a-cursor")


async def test_program_history_lists_recent_steps_newest_first(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    await store.put_program("other", {}, "o1")
    for name, module in (("qa", "retrieve"), ("qa", "answer"), ("other", "elsewhere")):
        started = await store.start_execution(name, 1, {}, worker_id="w", lease_seconds=30)
        assert started.lease_token is not None
        await store.finish_execution(
            started.id, started.lease_token, ExecutionStatus.COMPLETED, steps=[_step(module, clock)]
        )
    history = await store.list_steps_for_program("qa")
    assert [s.module for s in history] == ["answer", "retrieve"]
    assert [s.module for s in await store.list_steps_for_program("qa", limit=1)] == ["answer"]
    assert await store.list_steps_for_program("qa", version=2) == []

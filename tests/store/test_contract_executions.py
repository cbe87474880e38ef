"""The ExecutionStore contract: executions, leases, steps, attempts, history (every store)."""

from __future__ import annotations

from datetime import timedelta

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


async def _running(store: Store, lease_seconds: float = 30.0) -> tuple[str, str]:
    execution = await store.create_execution("qa", 1, {"question": "why?"})
    token = await store.claim_execution(execution.id, "worker-1", lease_seconds)
    return execution.id, token


# -- creation and claiming ---------------------------------------------------------------------


async def test_new_execution_is_pending_with_its_inputs(
    store: Store, program: ProgramRecord
) -> None:
    created = await store.create_execution("qa", 1, {"question": "why?", "n": [1, 2]})
    assert created.status is ExecutionStatus.PENDING
    assert (created.inputs, created.outputs, created.attempts) == (
        {"question": "why?", "n": [1, 2]},
        None,
        0,
    )
    assert created.lease_token is None
    assert await store.get_execution(created.id) == created


async def test_execution_ids_are_uuid7_strings_unless_given(
    store: Store, program: ProgramRecord
) -> None:
    generated = await store.create_execution("qa", 1, {})
    assert len(generated.id) == 36
    assert generated.id[14] == "7"
    given = await store.create_execution("qa", 1, {}, execution_id="my-id")
    assert given.id == "my-id"


async def test_duplicate_execution_id_raises_storage_error(
    store: Store, program: ProgramRecord
) -> None:
    await store.create_execution("qa", 1, {}, execution_id="dup")
    with pytest.raises(StorageError):
        await store.create_execution("qa", 1, {}, execution_id="dup")


async def test_execution_of_a_missing_program_version_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.create_execution("qa", 2, {})


async def test_unserialisable_inputs_raise_storage_error(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(StorageError):
        await store.create_execution("qa", 1, {"bad": {1, 2}})


async def test_missing_execution_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.get_execution("nope")
    with pytest.raises(NotFoundError):
        await store.claim_execution("nope", "w", 30)
    with pytest.raises(NotFoundError):
        await store.heartbeat("nope", "token", 30)
    with pytest.raises(NotFoundError):
        await store.finish_execution("nope", "token", ExecutionStatus.COMPLETED)


async def test_claim_marks_running_under_a_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    running = await store.get_execution(execution_id)
    assert running.status is ExecutionStatus.RUNNING
    assert (running.worker_id, running.lease_token, running.attempts) == ("worker-1", token, 1)
    assert running.started_at is not None
    assert running.lease_expires_at is not None
    assert running.lease_expires_at - running.started_at == timedelta(seconds=30)


async def test_a_live_lease_cannot_be_claimed_again(store: Store, program: ProgramRecord) -> None:
    execution_id, _ = await _running(store)
    with pytest.raises(LeaseLostError):
        await store.claim_execution(execution_id, "worker-2", 30)
    assert (await store.get_execution(execution_id)).worker_id == "worker-1"


async def test_an_expired_lease_can_be_reclaimed_by_another_worker(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, first = await _running(store)
    clock.advance(31)
    second = await store.claim_execution(execution_id, "worker-2", 30)
    assert second != first
    reclaimed = await store.get_execution(execution_id)
    assert (reclaimed.worker_id, reclaimed.attempts) == ("worker-2", 2)


async def test_a_finished_execution_cannot_be_claimed(store: Store, program: ProgramRecord) -> None:
    execution_id, token = await _running(store)
    await store.finish_execution(execution_id, token, ExecutionStatus.COMPLETED, outputs={})
    with pytest.raises(LeaseLostError):
        await store.claim_execution(execution_id, "worker-2", 30)


async def test_non_positive_lease_is_rejected(store: Store, program: ProgramRecord) -> None:
    execution = await store.create_execution("qa", 1, {})
    with pytest.raises(ValidationError):
        await store.claim_execution(execution.id, "w", 0)


# -- heartbeat and conditional writes ----------------------------------------------------------


async def test_heartbeat_extends_the_lease_from_now(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    clock.advance(20)
    expires = await store.heartbeat(execution_id, token, 30)
    assert (await store.get_execution(execution_id)).lease_expires_at == expires
    clock.advance(20)  # past the first lease, inside the extended one
    with pytest.raises(LeaseLostError):
        await store.claim_execution(execution_id, "worker-2", 30)


async def test_heartbeat_with_a_stale_token_raises_lease_lost(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, stale = await _running(store)
    clock.advance(31)
    await store.claim_execution(execution_id, "worker-2", 30)
    with pytest.raises(LeaseLostError):
        await store.heartbeat(execution_id, stale, 30)


async def test_finish_with_a_stale_token_changes_nothing(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, stale = await _running(store)
    clock.advance(31)
    fresh = await store.claim_execution(execution_id, "worker-2", 30)
    before = await store.get_execution(execution_id)
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
    assert (await store.get_program("qa")).execution_count == 0
    assert before.lease_token == fresh


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
    ids = [(await store.create_execution("qa", 1, {"i": i})).id for i in range(5)]
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
    in_batch = await store.create_execution("qa", 1, {}, batch_id=batch.id, batch_index=0)
    cutoff = clock()
    v2 = await store.create_execution("qa", 2, {})
    await store.create_execution("other", 1, {})
    execution_id, token = await _running(store)
    await store.finish_execution(execution_id, token, ExecutionStatus.FAILED)

    async def ids(**kwargs: object) -> set[str]:
        page = await store.list_executions(ExecutionFilter(**kwargs), limit=100)  # type: ignore[arg-type]
        return {e.id for e in page.items}

    assert await ids(program="qa", program_version=2) == {v2.id}
    assert await ids(statuses=[ExecutionStatus.FAILED]) == {execution_id}
    assert await ids(batch_id=batch.id) == {in_batch.id}
    assert in_batch.id not in await ids(created_after=cutoff)
    assert await ids(created_before=cutoff) == {in_batch.id}
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


async def test_expired_leases_are_found_oldest_first(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    short, _ = await _running(store, lease_seconds=10)
    long, _ = await _running(store, lease_seconds=60)
    done, token = await _running(store, lease_seconds=5)
    await store.finish_execution(done, token, ExecutionStatus.COMPLETED)
    await store.create_execution("qa", 1, {})
    assert await store.find_expired_leases() == []
    clock.advance(30)
    assert [e.id for e in await store.find_expired_leases()] == [short]
    later = clock.now + timedelta(seconds=60)
    assert [e.id for e in await store.find_expired_leases(later)] == [short, long]
    assert [e.id for e in await store.find_expired_leases(later, limit=1)] == [short]

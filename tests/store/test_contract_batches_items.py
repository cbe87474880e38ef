"""The BatchStore contract for the group writes that run a batch's items (every implementation)."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from typing import Any

import pytest
from tests.store._clock import FakeClock, pending_items
from tests.support.store_reads import batch_executions

from dspex.errors import NotFoundError, StorageError, ValidationError
from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    BatchRecord,
    ExecutionStatus,
    FinishRequest,
    ProgramRecord,
    StepRecord,
    StepStatus,
)
from dspex.store import SqlStore, Store

COMPLETED = ExecutionStatus.COMPLETED
FAILED = ExecutionStatus.FAILED
CANCELLED = ExecutionStatus.CANCELLED


@pytest.fixture
async def batch(store: Store, program: ProgramRecord, clock: FakeClock) -> BatchRecord:
    """A batch of ``qa`` v1 with items 0–9 pending (a first attempt made and reaped)."""
    created = await store.create_batch("qa", 1, {}, total=10)
    await pending_items(store, clock, created.id, [(i, {"i": i}) for i in range(10)])
    return created


def _done(
    claimed: dict[int, tuple[str, str]], index: int, status: ExecutionStatus = COMPLETED, **kw: Any
) -> FinishRequest:
    eid, token = claimed[index]
    return FinishRequest(eid, token, status, **kw)


async def _claim(store: Store, batch: BatchRecord, *indexes: int) -> dict[int, tuple[str, str]]:
    return await store.claim_batch_items(batch.id, indexes, worker_id="w-1", lease_seconds=30)


# -- items -------------------------------------------------------------------------------------


async def test_pending_items_are_executions_at_their_indexes(
    store: Store, batch: BatchRecord
) -> None:
    found = await batch_executions(store, batch.id)
    assert [(e.batch_index, e.inputs, e.status, e.lease_token) for e in found] == [
        (i, {"i": i}, ExecutionStatus.PENDING, None) for i in range(10)
    ]


async def test_creating_a_second_execution_at_a_taken_batch_index_is_refused(
    store: Store, batch: BatchRecord
) -> None:
    with pytest.raises(StorageError):
        await store.start_execution(
            "qa", 1, {}, worker_id="w", lease_seconds=30, batch_id=batch.id, batch_index=3
        )


# -- claim_batch_items --------------------------------------------------------------------------


async def test_claimed_items_run_under_one_shared_lease(
    store: Store, batch: BatchRecord, clock: FakeClock
) -> None:
    claimed = await _claim(store, batch, 0, 1, 2)
    assert sorted(claimed) == [0, 1, 2]
    assert len({token for _, token in claimed.values()}) == 1
    for index, (eid, token) in claimed.items():
        record = await store.get_execution(eid)
        assert (record.batch_index, record.status, record.lease_token) == (
            index,
            ExecutionStatus.RUNNING,
            token,
        )
        assert (record.attempts, record.worker_id) == (2, "w-1")  # the reaped one counted
        assert record.lease_expires_at is not None
        assert record.started_at is not None
        assert record.lease_expires_at > clock.now


async def test_claiming_skips_indexes_without_items(store: Store, batch: BatchRecord) -> None:
    assert sorted(await _claim(store, batch, 9, 10, 11)) == [9]


async def test_a_live_lease_is_never_claimed_twice(store: Store, batch: BatchRecord) -> None:
    await _claim(store, batch, 0, 1)
    assert sorted(await _claim(store, batch, 0, 1, 2)) == [2]


async def test_an_expired_lease_is_claimed_again(
    store: Store, batch: BatchRecord, clock: FakeClock
) -> None:
    first = await _claim(store, batch, 0)
    clock.advance(31)
    again = await _claim(store, batch, 0)
    assert again[0][0] == first[0][0]
    assert again[0][1] != first[0][1]
    assert (await store.get_execution(again[0][0])).attempts == 3


async def test_completed_items_are_never_claimed(store: Store, batch: BatchRecord) -> None:
    claimed = await _claim(store, batch, 0)
    assert await store.finish_executions([_done(claimed, 0)]) == [True]
    assert await _claim(store, batch, 0) == {}


async def test_cancelled_items_are_claimed_again(store: Store, batch: BatchRecord) -> None:
    claimed = await _claim(store, batch, 0)
    await store.finish_executions([_done(claimed, 0, CANCELLED)])
    assert sorted(await _claim(store, batch, 0)) == [0]


async def test_failed_items_are_claimed_only_when_retrying_failures(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0)
    await store.finish_executions([_done(claimed, 0, FAILED)])
    kept = await store.claim_batch_items(
        batch.id, [0], worker_id="w-2", lease_seconds=30, retry_failed=False
    )
    assert kept == {}
    assert sorted(await _claim(store, batch, 0)) == [0]


async def test_reclaiming_failed_and_cancelled_items_takes_them_out_of_the_batch_counts(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0, 1, 2)
    await store.finish_executions(
        [_done(claimed, 0, FAILED), _done(claimed, 1, CANCELLED), _done(claimed, 2)]
    )
    counted = await store.get_batch(batch.id)
    assert (counted.completed, counted.failed, counted.cancelled) == (1, 1, 1)
    await _claim(store, batch, 0, 1, 2)
    counted = await store.get_batch(batch.id)
    assert (counted.completed, counted.failed, counted.cancelled) == (1, 0, 0)


async def test_claiming_with_a_non_positive_lease_is_refused(
    store: Store, batch: BatchRecord
) -> None:
    with pytest.raises(ValidationError):
        await store.claim_batch_items(batch.id, [0], worker_id="w", lease_seconds=0)


# -- finish_executions --------------------------------------------------------------------------


async def test_finished_group_is_written_with_steps_attempts_and_counts(
    store: Store, batch: BatchRecord, clock: FakeClock
) -> None:
    claimed = await _claim(store, batch, 0, 1)
    step = StepRecord("answer", StepStatus.COMPLETED, clock(), clock(), 2.0, usage={"m": {"t": 1}})
    attempt = AttemptRecord("answer", 1, "mock", AttemptOutcome.SUCCEEDED, prompt_tokens=3)
    written = await store.finish_executions(
        [
            _done(
                claimed,
                0,
                outputs={"answer": "a"},
                usage={"m": {"t": 1}},
                duration_ms=2.0,
                backend="mock",
                steps=(step,),
                attempts=(attempt,),
            ),
            _done(claimed, 1, FAILED, error_code="timeout", error_message="slow", duration_ms=3.0),
        ]
    )
    assert written == [True, True]
    first = await store.get_execution(claimed[0][0])
    assert (first.status, first.outputs, first.usage, first.backend) == (
        COMPLETED,
        {"answer": "a"},
        {"m": {"t": 1}},
        "mock",
    )
    assert first.lease_token is None
    assert first.finished_at is not None
    second = await store.get_execution(claimed[1][0])
    assert (second.status, second.error_code, second.error_message) == (FAILED, "timeout", "slow")
    assert [(s.module, s.usage) for s in await store.list_steps(first.id)] == [
        ("answer", {"m": {"t": 1}})
    ]
    assert [(a.backend, a.prompt_tokens) for a in await store.list_attempts(first.id)] == [
        ("mock", 3)
    ]
    counted = await store.get_program("qa")
    assert (counted.execution_count, counted.success_count, counted.failure_count) == (2, 1, 1)
    assert counted.total_duration_ms == pytest.approx(5.0)
    batch_now = await store.get_batch(batch.id)
    assert (batch_now.completed, batch_now.failed, batch_now.cancelled) == (1, 1, 0)


async def test_lost_leases_in_a_group_write_nothing_and_spare_the_others(
    store: Store, batch: BatchRecord, clock: FakeClock
) -> None:
    stale = await _claim(store, batch, 0, 1)
    clock.advance(31)
    fresh = await _claim(store, batch, 0)
    step = StepRecord("answer", StepStatus.COMPLETED)
    attempt = AttemptRecord("answer", 1, "mock", AttemptOutcome.SUCCEEDED)
    written = await store.finish_executions(
        [
            _done(stale, 0, FAILED, steps=(step,), attempts=(attempt,)),
            _done(stale, 1, steps=(step,), attempts=(attempt,)),
        ]
    )
    assert written == [False, True]
    lost = await store.get_execution(stale[0][0])
    assert (lost.status, lost.lease_token) == (ExecutionStatus.RUNNING, fresh[0][1])
    assert await store.list_steps(lost.id) == []
    assert await store.list_attempts(lost.id) == []
    assert len(await store.list_steps(stale[1][0])) == 1
    counted = await store.get_program("qa")
    assert (counted.execution_count, counted.failure_count) == (1, 0)
    assert (await store.get_batch(batch.id)).failed == 0


async def test_finishing_an_unknown_execution_reports_it_unwritten(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0)
    written = await store.finish_executions(
        [FinishRequest("nope", "token", COMPLETED), _done(claimed, 0)]
    )
    assert written == [False, True]


async def test_the_same_execution_twice_in_a_group_is_written_once(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0)
    written = await store.finish_executions([_done(claimed, 0), _done(claimed, 0, FAILED)])
    assert written == [True, False]
    assert (await store.get_execution(claimed[0][0])).status is COMPLETED
    assert (await store.get_program("qa")).execution_count == 1


async def test_a_group_with_a_non_terminal_status_is_refused_whole(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0, 1)
    with pytest.raises(ValidationError):
        await store.finish_executions(
            [_done(claimed, 0), _done(claimed, 1, ExecutionStatus.PENDING)]
        )
    assert (await store.get_execution(claimed[0][0])).status is ExecutionStatus.RUNNING


async def test_a_group_with_an_unserialisable_output_is_refused_whole(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0, 1)
    with pytest.raises(StorageError):
        await store.finish_executions(
            [_done(claimed, 0), _done(claimed, 1, outputs={"x": object()})]
        )
    assert (await store.get_execution(claimed[0][0])).status is ExecutionStatus.RUNNING
    assert (await store.get_program("qa")).execution_count == 0


async def test_an_empty_group_writes_nothing(store: Store, batch: BatchRecord) -> None:
    assert await store.finish_executions([]) == []


async def test_cancelled_executions_count_in_the_batch_but_not_the_program(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0)
    await store.finish_executions([_done(claimed, 0, CANCELLED)])
    assert (await store.get_program("qa")).execution_count == 0
    assert (await store.get_batch(batch.id)).cancelled == 1


async def test_finishing_without_counters_leaves_the_program_counts_alone(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, 0)
    await store.finish_executions([_done(claimed, 0, bump_counters=False)])
    assert (await store.get_program("qa")).execution_count == 0
    assert (await store.get_batch(batch.id)).completed == 1


async def test_a_failed_item_rerun_to_completion_moves_from_failed_to_completed(
    store: Store, batch: BatchRecord
) -> None:
    first = await _claim(store, batch, 0)
    await store.finish_executions([_done(first, 0, FAILED)])
    second = await _claim(store, batch, 0)
    await store.finish_executions([_done(second, 0)])
    counted = await store.get_batch(batch.id)
    assert (counted.completed, counted.failed) == (1, 0)
    assert await store.batch_item_states(batch.id) == {"completed": 1, "pending": 9}


async def test_concurrent_claims_and_finishes_keep_every_count_exact(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    total = 200
    batch = await store.create_batch("qa", 1, {}, total=total)
    await pending_items(store, clock, batch.id, [(i, {"i": i}) for i in range(total)])

    async def worker(start: int) -> None:
        indexes = range(start, total, 10)
        claimed = await store.claim_batch_items(
            batch.id, indexes, worker_id="w", lease_seconds=30, retry_failed=False
        )
        await store.finish_executions(
            [_done(claimed, i, FAILED if i % 3 == 0 else COMPLETED) for i in claimed]
        )

    # Twice as many workers as slices: each slice is claimed by one and skipped by the other.
    await asyncio.gather(*(worker(k % 10) for k in range(20)))
    failed = len(range(0, total, 3))
    counted = await store.get_batch(batch.id)
    assert (counted.completed, counted.failed) == (total - failed, failed)
    assert await store.batch_item_states(batch.id) == {
        "completed": total - failed,
        "failed": failed,
    }
    program_now = await store.get_program("qa")
    assert (program_now.execution_count, program_now.failure_count) == (total, failed)


# -- heartbeat_lease, batch_item_states, iter_batch_results -----------------------------------


async def test_heartbeat_extends_every_execution_held_by_the_token(
    store: Store, batch: BatchRecord, clock: FakeClock
) -> None:
    group = await _claim(store, batch, 0, 1, 2)
    other = await _claim(store, batch, 3)
    await store.finish_executions([_done(group, 2)])
    clock.advance(20)
    assert await store.heartbeat_lease(group[0][1], 30) == 2
    clock.advance(20)
    assert sorted(await _claim(store, batch, 0, 1, 3)) == [3]
    assert other[3][1] != group[0][1]


async def test_heartbeat_of_an_unknown_token_extends_nothing(
    store: Store, batch: BatchRecord
) -> None:
    assert await store.heartbeat_lease("nope", 30) == 0


async def test_heartbeat_with_a_non_positive_lease_is_refused(store: Store) -> None:
    with pytest.raises(ValidationError):
        await store.heartbeat_lease("token", -1)


async def test_item_states_count_executions_by_status(store: Store, batch: BatchRecord) -> None:
    claimed = await _claim(store, batch, 0, 1, 2)
    await store.finish_executions([_done(claimed, 0), _done(claimed, 1, FAILED)])
    assert await store.batch_item_states(batch.id) == {
        "pending": 7,
        "running": 1,
        "completed": 1,
        "failed": 1,
    }


async def test_item_states_of_an_unknown_batch_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.batch_item_states("nope")


async def test_results_stream_in_batch_index_order_across_chunks(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=25)
    items = [(i, {"i": i}) for i in reversed(range(25))]
    await store.add_and_claim_batch_items(batch.id, "qa", 1, items, worker_id="w", lease_seconds=30)
    found = [r async for r in store.iter_batch_results(batch.id, chunk=4)]
    assert [r.batch_index for r in found] == list(range(25))
    assert [r.inputs for r in found[:2]] == [{"i": 0}, {"i": 1}]


async def test_results_of_an_empty_batch_are_empty(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {}, total=0)
    assert [r async for r in store.iter_batch_results(batch.id)] == []


async def test_results_of_an_unknown_batch_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        async for _ in store.iter_batch_results("nope"):
            pass  # pragma: no cover - raises before the first item


async def test_results_with_a_non_positive_chunk_are_refused(
    store: Store, batch: BatchRecord
) -> None:
    with pytest.raises(ValidationError):
        async for _ in store.iter_batch_results(batch.id, chunk=0):
            pass  # pragma: no cover - raises before the first item


async def test_streaming_a_large_batch_holds_one_chunk_at_a_time(sql_store: SqlStore) -> None:
    total = 20_000
    await sql_store.put_program("qa", {}, "hash-1")
    batch = await sql_store.create_batch("qa", 1, {}, total=total)
    payload = {"question": "x" * 200}
    for start in range(0, total, 500):
        items = [(i, payload) for i in range(start, start + 500)]
        await sql_store.add_and_claim_batch_items(
            batch.id, "qa", 1, items, worker_id="w", lease_seconds=30
        )

    gc.collect()
    tracemalloc.start()
    try:
        seen = 0
        async for record in sql_store.iter_batch_results(batch.id, chunk=500):
            assert record.batch_index == seen
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    # Held all at once these records take over 20 MB; one chunk of 500 takes about 1 MB.
    assert peak < 4_000_000

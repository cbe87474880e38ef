"""The store's reaper and maintenance methods, on every store implementation."""

from __future__ import annotations

from datetime import timedelta

from tests.store._clock import FakeClock, pending_items

from dspex.records import (
    BatchStatus,
    ExecutionRecord,
    ExecutionStatus,
    ProgramStatus,
    StepRecord,
    StepStatus,
)
from dspex.store import Store

LEASE = 30.0


async def _running(store: Store, **kwargs: object) -> ExecutionRecord:
    return await store.start_execution(
        "qa",
        1,
        {"q": "x"},
        worker_id="w1",
        lease_seconds=LEASE,
        **kwargs,  # type: ignore[arg-type]
    )


async def _finished(store: Store, status: ExecutionStatus, **kwargs: object) -> ExecutionRecord:
    started = await _running(store, **kwargs)
    return await store.finish_execution(started.id, started.lease_token or "", status)


async def test_a_stand_alone_execution_whose_lease_expired_is_failed_as_lease_expired(
    store: Store, clock: FakeClock
) -> None:
    started = await _running(store)
    clock.advance(LEASE + 1)
    result = await store.reap_expired_leases()
    assert (result.requeued, result.failed) == ([], [started.id])
    record = await store.get_execution(started.id)
    assert record.status is ExecutionStatus.FAILED
    assert record.error_code == "lease_expired"
    assert record.lease_token is None
    assert record.finished_at is not None
    program = await store.get_program("qa", 1)
    assert (program.execution_count, program.failure_count) == (1, 1)


async def test_a_live_lease_is_left_alone(store: Store, clock: FakeClock) -> None:
    started = await _running(store)
    clock.advance(LEASE - 1)
    result = await store.reap_expired_leases()
    assert result.total == 0
    assert (await store.get_execution(started.id)).status is ExecutionStatus.RUNNING


async def test_an_expired_batch_item_below_the_cap_is_requeued_and_its_next_claim_counts(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    started = await _running(store, batch_id=batch.id, batch_index=0)
    clock.advance(LEASE + 1)
    result = await store.reap_expired_leases(attempt_cap=3)
    assert result.requeued == [started.id]
    record = await store.get_execution(started.id)
    assert record.status is ExecutionStatus.PENDING
    assert (record.worker_id, record.lease_token, record.lease_expires_at) == (None, None, None)
    claimed = await store.claim_batch_items(batch.id, [0], worker_id="w2", lease_seconds=LEASE)
    assert claimed[0][0] == started.id
    assert (await store.get_execution(started.id)).attempts == 2


async def test_an_expired_batch_item_at_the_cap_is_failed_and_counted_on_its_batch(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    started = await _running(store, batch_id=batch.id, batch_index=0)
    clock.advance(LEASE + 1)
    result = await store.reap_expired_leases(attempt_cap=1)
    assert result.failed == [started.id]
    assert result.failed_per_batch == {batch.id: 1}
    assert (await store.get_batch(batch.id)).failed == 1


async def test_a_dry_run_classifies_every_expired_execution_and_changes_nothing(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, 2)
    item = await _running(store, batch_id=batch.id, batch_index=0)
    alone = await _running(store)
    clock.advance(LEASE + 1)
    preview = await store.reap_expired_leases(dry_run=True, limit=1)
    assert (preview.requeued, preview.failed) == ([item.id], [alone.id])
    assert (await store.get_execution(item.id)).status is ExecutionStatus.RUNNING
    assert (await store.get_execution(alone.id)).status is ExecutionStatus.RUNNING


async def test_reaping_takes_at_most_limit_executions_per_call(
    store: Store, clock: FakeClock
) -> None:
    for _ in range(3):
        await _running(store)
    clock.advance(LEASE + 1)
    assert (await store.reap_expired_leases(limit=2)).total == 2
    assert (await store.reap_expired_leases(limit=2)).total == 1


async def test_a_batch_whose_items_are_all_terminal_is_finalized_with_recounted_items(
    store: Store,
) -> None:
    batch = await store.create_batch("qa", 1, {}, 2)
    await _finished(store, ExecutionStatus.COMPLETED, batch_id=batch.id, batch_index=0)
    await _finished(store, ExecutionStatus.FAILED, batch_id=batch.id, batch_index=1)
    done = await store.finalize_batches()
    assert [(f.batch_id, f.status, f.completed, f.failed) for f in done] == [
        (batch.id, BatchStatus.FAILED, 1, 1)
    ]
    final = await store.get_batch(batch.id)
    assert final.status is BatchStatus.FAILED
    assert (final.completed, final.failed, final.finished_at is not None) == (1, 1, True)
    assert await store.finalize_batches() == []


async def test_a_batch_with_only_completed_items_is_finalized_completed(store: Store) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    await _finished(store, ExecutionStatus.COMPLETED, batch_id=batch.id, batch_index=0)
    assert [f.status for f in await store.finalize_batches()] == [BatchStatus.COMPLETED]


async def test_a_batch_with_a_cancelled_item_is_finalized_cancelled(store: Store) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    await _finished(store, ExecutionStatus.CANCELLED, batch_id=batch.id, batch_index=0)
    assert [f.status for f in await store.finalize_batches()] == [BatchStatus.CANCELLED]


async def test_a_batch_with_a_running_item_or_missing_items_is_left_open(store: Store) -> None:
    busy = await store.create_batch("qa", 1, {}, 1)
    await _running(store, batch_id=busy.id, batch_index=0)
    short = await store.create_batch("qa", 1, {}, 2)
    await _finished(store, ExecutionStatus.COMPLETED, batch_id=short.id, batch_index=0)
    assert await store.finalize_batches() == []
    assert (await store.get_batch(busy.id)).status is BatchStatus.PENDING


async def test_a_dry_run_finalization_can_assume_running_items_failed(store: Store) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    await _running(store, batch_id=batch.id, batch_index=0)
    preview = await store.finalize_batches(dry_run=True, assume_failed={batch.id: 1})
    assert [(f.status, f.failed) for f in preview] == [(BatchStatus.FAILED, 1)]
    assert (await store.get_batch(batch.id)).status is BatchStatus.PENDING


async def test_a_program_stuck_initializing_goes_to_error(store: Store, clock: FakeClock) -> None:
    await store.set_program_status("qa", 1, ProgramStatus.INITIALIZING)
    cutoff = clock.now - timedelta(seconds=1)
    assert await store.fail_stuck_programs(cutoff) == []
    clock.advance(601)
    assert await store.fail_stuck_programs(clock.now - timedelta(seconds=600), dry_run=True) == [
        ("qa", 1)
    ]
    assert (await store.get_program("qa", 1)).status is ProgramStatus.INITIALIZING
    assert await store.fail_stuck_programs(clock.now - timedelta(seconds=600)) == [("qa", 1)]
    program = await store.get_program("qa", 1)
    assert program.status is ProgramStatus.ERROR
    assert program.error is not None
    assert "initializing since" in program.error


async def test_old_terminal_executions_are_deleted_with_their_steps(
    store: Store, clock: FakeClock
) -> None:
    started = await _running(store)
    step = StepRecord(module="answer", status=StepStatus.COMPLETED)
    await store.finish_execution(
        started.id, started.lease_token or "", ExecutionStatus.COMPLETED, steps=[step]
    )
    still_running = await _running(store)
    clock.advance(3600)
    recent = await _finished(store, ExecutionStatus.FAILED)
    cutoff = clock.now - timedelta(seconds=60)
    assert await store.delete_executions(cutoff, dry_run=True) == (1, [started.id])
    assert await store.delete_executions(cutoff) == (1, [started.id])
    assert await store.list_steps(started.id) == []
    remaining = {r.id for r in (await store.list_executions()).items}
    assert remaining == {still_running.id, recent.id}


async def test_deletion_works_in_chunks_of_limit(store: Store, clock: FakeClock) -> None:
    for _ in range(3):
        await _finished(store, ExecutionStatus.COMPLETED)
    clock.advance(60)
    assert (await store.delete_executions(clock.now, limit=2))[0] == 2
    assert (await store.delete_executions(clock.now, limit=2))[0] == 1
    assert (await store.delete_executions(clock.now, limit=2))[0] == 0


async def test_open_executions_counts_pending_running_and_expired(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    await pending_items(store, clock, batch.id, [(0, {"q": "x"})])
    await _running(store)
    clock.advance(LEASE + 1)
    await _running(store)
    counts = await store.open_executions()
    assert (counts.pending, counts.running, counts.expired) == (1, 2, 1)


async def test_execution_summaries_are_the_recent_executions_newest_first(
    store: Store, clock: FakeClock
) -> None:
    await _finished(store, ExecutionStatus.COMPLETED)
    clock.advance(3600)
    since = clock.now
    newer = await _finished(store, ExecutionStatus.FAILED)
    newest = await _finished(store, ExecutionStatus.COMPLETED)
    rows = await store.execution_summaries(since)
    assert [r.id for r in rows] == [newest.id, newer.id]
    assert rows[1].status is ExecutionStatus.FAILED


async def test_every_table_of_a_working_store_is_readable(store: Store) -> None:
    probed = await store.probe_tables()
    assert {"executions", "programs", "batches", "steps", "attempts"} <= set(probed)
    assert set(probed.values()) == {None}

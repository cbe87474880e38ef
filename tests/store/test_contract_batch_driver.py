"""The BatchStore contract for a batch's driver (the process running it, under a lease), cancel
requests from other processes, and items recorded ``pending`` before any runs (every
implementation)."""

from __future__ import annotations

import asyncio

import pytest
from tests.store._clock import FakeClock

from dspex.errors import NotFoundError, StorageError, ValidationError
from dspex.records import BatchStatus, ExecutionStatus, ProgramRecord
from dspex.store import Store


async def _running(store: Store, total: int = 2) -> str:
    batch = await store.create_batch("qa", 1, {}, total=total)
    await store.set_batch_status(batch.id, BatchStatus.RUNNING)
    return batch.id


async def test_a_new_batch_has_no_driver(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    assert (batch.driver, batch.driver_expires_at, batch.cancel_requested) == (None, None, False)


async def test_taking_the_driver_sets_it_under_a_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch_id = await _running(store)
    taken = await store.take_batch_driver(batch_id, "a", 10)
    assert taken is not None
    assert taken.driver == "a"
    assert taken.driver_expires_at is not None
    assert taken.driver_expires_at > clock.now
    assert await store.get_batch(batch_id) == taken


async def test_a_live_driver_is_not_taken_over_but_a_lapsed_one_is_taken_once(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch_id = await _running(store)
    await store.take_batch_driver(batch_id, "a", 10)
    assert await store.take_batch_driver(batch_id, "b", 10, lapsed_only=True) is None
    assert await store.lapsed_batches() == []
    clock.advance(11)
    assert [b.id for b in await store.lapsed_batches()] == [batch_id]
    taken = await store.take_batch_driver(batch_id, "b", 10, lapsed_only=True)
    assert taken is not None
    assert taken.driver == "b"
    assert await store.take_batch_driver(batch_id, "c", 10, lapsed_only=True) is None
    assert await store.lapsed_batches() == []


async def test_of_processes_racing_for_a_lapsed_batch_exactly_one_takes_it(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch_id = await _running(store)
    await store.take_batch_driver(batch_id, "dead", 1)
    clock.advance(2)
    outcomes = await asyncio.gather(
        *(store.take_batch_driver(batch_id, f"r{n}", 10, lapsed_only=True) for n in range(6))
    )
    winners = [o.driver for o in outcomes if o is not None]
    assert len(winners) == 1
    assert (await store.get_batch(batch_id)).driver == winners[0]


async def test_a_batch_without_a_driver_or_finished_is_never_lapsed(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    never_driven = await _running(store)
    finished = await _running(store)
    await store.take_batch_driver(finished, "a", 1)
    await store.set_batch_status(finished, BatchStatus.COMPLETED)
    clock.advance(5)
    assert await store.lapsed_batches() == []
    for batch_id in (never_driven, finished):
        assert await store.take_batch_driver(batch_id, "b", 10, lapsed_only=True) is None


async def test_only_the_driver_renews_its_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch_id = await _running(store)
    first = await store.take_batch_driver(batch_id, "a", 10)
    assert first is not None
    clock.advance(5)
    renewed = await store.renew_batch_driver(batch_id, "a", 10)
    assert renewed.driver_expires_at is not None
    assert first.driver_expires_at is not None
    assert renewed.driver_expires_at > first.driver_expires_at
    other = await store.renew_batch_driver(batch_id, "b", 100)
    assert (other.driver, other.driver_expires_at) == ("a", renewed.driver_expires_at)


async def test_releasing_clears_the_driver_only_for_its_holder(
    store: Store, program: ProgramRecord
) -> None:
    batch_id = await _running(store)
    await store.take_batch_driver(batch_id, "a", 10)
    await store.release_batch_driver(batch_id, "b")
    assert (await store.get_batch(batch_id)).driver == "a"
    await store.release_batch_driver(batch_id, "a")
    released = await store.get_batch(batch_id)
    assert (released.driver, released.driver_expires_at) == (None, None)


async def test_a_cancel_request_reaches_a_live_driver_on_renewal(
    store: Store, program: ProgramRecord
) -> None:
    batch_id = await _running(store)
    await store.take_batch_driver(batch_id, "a", 10)
    asked = await store.request_batch_cancel(batch_id)
    assert asked.cancel_requested
    assert asked.status is BatchStatus.RUNNING  # the driver cancels it
    assert (await store.renew_batch_driver(batch_id, "a", 10)).cancel_requested
    # a requested cancel is never taken over, even once the driver's lease lapsed
    assert await store.lapsed_batches() == []


async def test_a_cancel_request_cancels_at_once_a_batch_with_no_live_driver(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    lapsed = await _running(store)
    await store.take_batch_driver(lapsed, "a", 1)
    clock.advance(2)
    never_driven = await _running(store)
    for batch_id in (lapsed, never_driven):
        cancelled = await store.request_batch_cancel(batch_id)
        assert cancelled.status is BatchStatus.CANCELLED
        assert cancelled.finished_at is not None
        assert cancelled.cancel_requested


async def test_a_cancel_request_leaves_a_finished_batch_as_it_is(
    store: Store, program: ProgramRecord
) -> None:
    batch_id = await _running(store)
    done = await store.set_batch_status(batch_id, BatchStatus.COMPLETED)
    assert await store.request_batch_cancel(batch_id) == done


async def test_taking_the_driver_again_clears_a_cancel_request(
    store: Store, program: ProgramRecord
) -> None:
    batch_id = await _running(store)
    await store.request_batch_cancel(batch_id)
    resumed = await store.take_batch_driver(batch_id, "b", 10)
    assert resumed is not None
    assert not resumed.cancel_requested


async def test_driver_calls_on_a_missing_batch_raise_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.take_batch_driver("nope", "a", 10)
    with pytest.raises(NotFoundError):
        await store.take_batch_driver("nope", "a", 10, lapsed_only=True)
    with pytest.raises(NotFoundError):
        await store.renew_batch_driver("nope", "a", 10)
    with pytest.raises(NotFoundError):
        await store.request_batch_cancel("nope")
    await store.release_batch_driver("nope", "a")  # nothing to release


async def test_driver_leases_must_be_positive(store: Store, program: ProgramRecord) -> None:
    batch_id = await _running(store)
    with pytest.raises(ValidationError):
        await store.take_batch_driver(batch_id, "a", 0)
    with pytest.raises(ValidationError):
        await store.renew_batch_driver(batch_id, "a", -1)
    with pytest.raises(ValidationError):
        await store.lapsed_batches(limit=0)


async def test_lapsed_batches_come_oldest_first_up_to_the_limit(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    ids = [await _running(store) for _ in range(3)]
    for batch_id in ids:
        await store.take_batch_driver(batch_id, "a", 1)
    clock.advance(2)
    assert [b.id for b in await store.lapsed_batches(limit=2)] == ids[:2]


# -- items recorded before any runs -------------------------------------------------------------


async def test_added_items_are_pending_with_their_inputs_and_claimable(
    store: Store, program: ProgramRecord
) -> None:
    batch_id = await _running(store, total=3)
    added = await store.add_batch_items(batch_id, "qa", 1, [(i, {"q": i}) for i in range(3)])
    assert added == 3
    rows = [r async for r in store.iter_batch_results(batch_id)]
    assert [(r.batch_index, r.status, r.inputs, r.attempts) for r in rows] == [
        (i, ExecutionStatus.PENDING, {"q": i}, 0) for i in range(3)
    ]
    assert await store.batch_item_states(batch_id) == {"pending": 3}
    claimed = await store.add_and_claim_batch_items(
        batch_id, "qa", 1, [(i, {"other": i}) for i in range(3)], worker_id="w", lease_seconds=5
    )
    assert sorted(claimed) == [0, 1, 2]
    rows = [r async for r in store.iter_batch_results(batch_id)]
    assert [r.inputs for r in rows] == [{"q": i} for i in range(3)]  # kept, not replaced
    assert {r.status for r in rows} == {ExecutionStatus.RUNNING}


async def test_adding_items_again_keeps_the_existing_ones(
    store: Store, program: ProgramRecord
) -> None:
    batch_id = await _running(store, total=3)
    assert await store.add_batch_items(batch_id, "qa", 1, [(0, {"q": 0}), (0, {"q": 9})]) == 1
    assert await store.add_batch_items(batch_id, "qa", 1, [(0, {"q": 5}), (1, {"q": 1})]) == 1
    assert await store.add_batch_items(batch_id, "qa", 1, []) == 0
    rows = [r async for r in store.iter_batch_results(batch_id)]
    assert [(r.batch_index, r.inputs) for r in rows] == [(0, {"q": 0}), (1, {"q": 1})]


async def test_adding_items_to_a_missing_batch_or_version_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.add_batch_items("nope", "qa", 1, [(0, {})])
    with pytest.raises(NotFoundError):
        await store.add_batch_items("nope", "qa", 1, [])
    batch_id = await _running(store)
    with pytest.raises(NotFoundError):
        await store.add_batch_items(batch_id, "qa", 7, [(0, {})])


async def test_an_unserialisable_input_adds_nothing(store: Store, program: ProgramRecord) -> None:
    batch_id = await _running(store)
    with pytest.raises(StorageError):
        await store.add_batch_items(batch_id, "qa", 1, [(0, {"q": 0}), (1, {"q": object()})])
    assert await store.batch_item_states(batch_id) == {}


async def test_a_batch_whose_driver_renews_its_lease_is_not_stalled(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch_id = await _running(store, total=2)
    await store.add_batch_items(batch_id, "qa", 1, [(0, {"q": 0}), (1, {"q": 1})])
    await store.take_batch_driver(batch_id, "a", 60)
    clock.advance(30)
    idle_since = clock.now
    assert await store.stalled_batches(idle_since, fail=True) == []
    clock.advance(31)  # the driver died: its lease lapsed
    stalled = await store.stalled_batches(clock.now, fail=True)
    assert [s.batch_id for s in stalled] == [batch_id]
    assert (await store.get_batch(batch_id)).status is BatchStatus.FAILED


async def test_a_batch_stopped_by_its_driver_is_handed_over_with_its_lease_lapsed(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch_id = await _running(store)
    await store.take_batch_driver(batch_id, "a", 10)
    await store.release_batch_driver(batch_id, "a")
    await store.set_batch_status(batch_id, BatchStatus.CANCELLED)
    handed = await store.hand_over_batch(batch_id)
    assert handed is not None
    assert (handed.status, handed.finished_at, handed.driver) == (
        BatchStatus.RUNNING,
        None,
        "handed-over",
    )
    clock.advance(0.001)
    assert [b.id for b in await store.lapsed_batches()] == [batch_id]
    taken = await store.take_batch_driver(batch_id, "b", 10, lapsed_only=True)
    assert taken is not None
    assert taken.driver == "b"


async def test_only_a_batch_stopped_without_a_cancel_request_is_handed_over(
    store: Store, program: ProgramRecord
) -> None:
    running = await _running(store)
    assert await store.hand_over_batch(running) is None
    asked = await _running(store)
    await store.request_batch_cancel(asked)  # no driver: cancelled at once, at a request
    assert await store.hand_over_batch(asked) is None
    assert (await store.get_batch(asked)).status is BatchStatus.CANCELLED
    with pytest.raises(NotFoundError):
        await store.hand_over_batch("nope")

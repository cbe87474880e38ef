"""The BatchStore contract for ``add_and_claim_batch_items`` (every implementation).

New items are written ``running`` from the start; items that exist already are claimed exactly
as ``claim_batch_items`` claims them; all of it in one transaction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from tests.store._clock import FakeClock, pending_items
from tests.support.store_reads import batch_executions

from dspex.errors import NotFoundError, StorageError, ValidationError
from dspex.records import BatchRecord, ExecutionStatus, FinishRequest, ProgramRecord
from dspex.store import SqlStore, Store

COMPLETED = ExecutionStatus.COMPLETED
FAILED = ExecutionStatus.FAILED
CANCELLED = ExecutionStatus.CANCELLED
RUNNING = ExecutionStatus.RUNNING
PENDING = ExecutionStatus.PENDING

Claimed = dict[int, tuple[str, str]]


def _items(indexes: Sequence[int], **extra: Any) -> list[tuple[int, Mapping[str, Any]]]:
    return [(i, {"i": i, **extra}) for i in indexes]


async def _add_and_claim(
    store: Store,
    batch: BatchRecord,
    indexes: Sequence[int],
    *,
    worker: str = "w-1",
    retry_failed: bool = True,
    **extra: Any,
) -> Claimed:
    return await store.add_and_claim_batch_items(
        batch.id,
        "qa",
        1,
        _items(indexes, **extra),
        worker_id=worker,
        lease_seconds=30,
        retry_failed=retry_failed,
    )


async def _finish(store: Store, claimed: Claimed, index: int, status: ExecutionStatus) -> None:
    eid, token = claimed[index]
    assert await store.finish_executions([FinishRequest(eid, token, status)]) == [True]


async def _counts_match_executions(store: Store, batch_id: str) -> tuple[int, int, int]:
    """The batch's counts, after checking they equal its executions per terminal status."""
    counted = await store.get_batch(batch_id)
    states = await store.batch_item_states(batch_id)
    counts = (counted.completed, counted.failed, counted.cancelled)
    assert counts == tuple(states.get(s.value, 0) for s in (COMPLETED, FAILED, CANCELLED))
    return counts


async def _mixed_batches(store: Store, clock: FakeClock, count: int = 1) -> list[BatchRecord]:
    """Resumed batches: 0 completed, 1 failed, 2 cancelled, 3 running under a live lease,
    4 running under an expired lease, 5 pending (reaped once); nothing yet at 6 and 7."""
    made = [await store.create_batch("qa", 1, {}, total=8) for _ in range(count)]
    for batch in made:
        first = await store.add_and_claim_batch_items(
            batch.id, "qa", 1, _items([0, 1, 2, 4]), worker_id="old", lease_seconds=30
        )
        await _finish(store, first, 0, COMPLETED)
        await _finish(store, first, 1, FAILED)
        await _finish(store, first, 2, CANCELLED)
        await pending_items(store, clock, batch.id, _items([5]))
    clock.advance(31)
    for batch in made:
        await store.add_and_claim_batch_items(
            batch.id, "qa", 1, _items([3]), worker_id="live", lease_seconds=30
        )
    return made


async def _mixed_batch(store: Store, clock: FakeClock) -> BatchRecord:
    return (await _mixed_batches(store, clock))[0]


async def _snapshot(store: Store, batch_id: str) -> list[tuple[Any, ...]]:
    return [
        (e.batch_index, e.status, e.attempts, e.inputs, e.worker_id)
        for e in await batch_executions(store, batch_id)
    ]


# -- a new batch ---------------------------------------------------------------------------------


async def test_new_items_are_created_running_under_one_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=5)
    claimed = await _add_and_claim(store, batch, range(5))
    assert sorted(claimed) == [0, 1, 2, 3, 4]
    assert len({token for _, token in claimed.values()}) == 1
    for index, (eid, token) in claimed.items():
        record = await store.get_execution(eid)
        assert (record.batch_id, record.batch_index, record.inputs) == (
            batch.id,
            index,
            {"i": index},
        )
        assert (record.status, record.attempts, record.worker_id, record.lease_token) == (
            RUNNING,
            1,
            "w-1",
            token,
        )
        assert record.started_at is not None
        assert record.started_at >= record.created_at
        assert record.lease_expires_at is not None
        assert record.lease_expires_at > clock.now
        assert (record.outputs, record.finished_at, record.usage) == (None, None, {})
    assert await store.batch_item_states(batch.id) == {"running": 5}
    assert await _counts_match_executions(store, batch.id) == (0, 0, 0)


async def test_new_ids_are_uuid7_and_sorted_by_creation(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=400)
    before_ms = time.time_ns() // 1_000_000
    first = await _add_and_claim(store, batch, range(200))
    second = await _add_and_claim(store, batch, range(200, 400))
    ids = [first[i][0] for i in range(200)] + [second[i][0] for i in range(200, 400)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 400
    for eid in ids:
        parsed = uuid.UUID(eid)
        assert (str(parsed), parsed.version, parsed.variant) == (eid, 7, uuid.RFC_4122)
    stamp_ms = uuid.UUID(ids[0]).int >> 80
    assert before_ms - 1000 <= stamp_ms <= time.time_ns() // 1_000_000 + 1000
    assert uuid.UUID(batch.id).version == 7
    assert batch.id < ids[0]


async def test_the_lease_token_returned_finishes_the_items(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=3)
    claimed = await _add_and_claim(store, batch, range(3))
    statuses = {0: COMPLETED, 1: FAILED, 2: CANCELLED}
    written = await store.finish_executions(
        [FinishRequest(*claimed[i], statuses[i], duration_ms=2.0) for i in range(3)]
    )
    assert written == [True, True, True]
    assert await _counts_match_executions(store, batch.id) == (1, 1, 1)
    counted = await store.get_program("qa")
    assert (counted.execution_count, counted.success_count, counted.failure_count) == (2, 1, 1)


async def test_the_lease_token_is_heartbeated_like_a_claimed_one(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=3)
    claimed = await _add_and_claim(store, batch, range(3))
    clock.advance(20)
    assert await store.heartbeat_lease(claimed[0][1], 30) == 3
    clock.advance(20)
    assert await store.claim_batch_items(batch.id, [0, 1, 2], worker_id="w", lease_seconds=5) == {}


async def test_new_items_whose_lease_expired_are_claimed_again(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=2)
    first = await _add_and_claim(store, batch, range(2))
    clock.advance(31)
    again = await store.claim_batch_items(batch.id, [0, 1], worker_id="w-2", lease_seconds=30)
    assert {i: eid for i, (eid, _) in again.items()} == {i: eid for i, (eid, _) in first.items()}
    assert (await store.get_execution(again[0][0])).attempts == 2
    stale = FinishRequest(*first[0], COMPLETED)
    assert await store.finish_executions([stale]) == [False]


async def test_the_same_index_twice_in_one_call_is_created_once(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=2)
    claimed = await store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(0, {"v": "first"}), (1, {}), (0, {"v": "second"})],
        worker_id="w", lease_seconds=30,
    )  # fmt: skip
    assert sorted(claimed) == [0, 1]
    found = await batch_executions(store, batch.id)
    assert [(e.batch_index, e.inputs, e.attempts) for e in found] == [
        (0, {"v": "first"}, 1),
        (1, {}, 1),
    ]
    assert found[0].id == claimed[0][0]


# -- a resumed batch -----------------------------------------------------------------------------


async def test_a_resumed_batch_claims_existing_items_by_the_claim_rules(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await _mixed_batch(store, clock)
    before = {e.batch_index: e for e in await batch_executions(store, batch.id)}
    assert await _counts_match_executions(store, batch.id) == (1, 1, 1)
    claimed = await _add_and_claim(store, batch, range(8), again=True)
    assert sorted(claimed) == [1, 2, 4, 5, 6, 7]
    assert len({token for _, token in claimed.values()}) == 1
    after = {e.batch_index: e for e in await batch_executions(store, batch.id)}
    for index in range(6):  # existing items keep their ids and inputs
        assert after[index].id == before[index].id
        assert after[index].inputs == {"i": index}
    assert [after[i].inputs for i in (6, 7)] == [{"i": 6, "again": True}, {"i": 7, "again": True}]
    assert {i: (after[i].status, after[i].attempts, after[i].worker_id) for i in range(8)} == {
        0: (COMPLETED, 1, "old"),
        1: (RUNNING, 2, "w-1"),
        2: (RUNNING, 2, "w-1"),
        3: (RUNNING, 1, "live"),
        4: (RUNNING, 2, "w-1"),
        5: (RUNNING, 2, "w-1"),
        6: (RUNNING, 1, "w-1"),
        7: (RUNNING, 1, "w-1"),
    }
    assert after[3].lease_token != claimed[1][1]
    assert await _counts_match_executions(store, batch.id) == (1, 0, 0)


async def test_a_resumed_batch_keeps_failed_items_unless_retrying_failures(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await _mixed_batch(store, clock)
    claimed = await _add_and_claim(store, batch, range(8), retry_failed=False)
    assert sorted(claimed) == [2, 4, 5, 6, 7]
    assert (await store.get_execution((await _ids(store, batch))[1])).status is FAILED
    assert await _counts_match_executions(store, batch.id) == (1, 1, 0)


async def _ids(store: Store, batch: BatchRecord) -> dict[int, str]:
    found = await batch_executions(store, batch.id)
    return {e.batch_index: e.id for e in found if e.batch_index is not None}


@pytest.mark.parametrize("retry_failed", [True, False])
async def test_it_claims_existing_items_as_claim_batch_items_does(
    store: Store, program: ProgramRecord, clock: FakeClock, retry_failed: bool
) -> None:
    one, two = await _mixed_batches(store, clock, 2)
    claimed_one = await store.claim_batch_items(
        one.id, range(8), worker_id="w", lease_seconds=30, retry_failed=retry_failed
    )
    claimed_two = await store.add_and_claim_batch_items(
        two.id, "qa", 1, _items(range(8)), worker_id="w", lease_seconds=30,
        retry_failed=retry_failed,
    )  # fmt: skip
    assert sorted(claimed_two) == [*sorted(claimed_one), 6, 7]  # and the two new ones
    assert (await _snapshot(store, two.id))[:6] == await _snapshot(store, one.id)
    assert await _counts_match_executions(store, one.id) == await _counts_match_executions(
        store, two.id
    )
    # Finishing everything claimed counts both batches alike, the new items besides.
    for claimed in (claimed_one, claimed_two):
        written = await store.finish_executions(
            [FinishRequest(*pair, COMPLETED) for pair in claimed.values()]
        )
        assert all(written)
    completed, failed, cancelled = await _counts_match_executions(store, one.id)
    assert await _counts_match_executions(store, two.id) == (completed + 2, failed, cancelled)


async def test_a_fully_claimed_chunk_claims_nothing_more(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=3)
    await _add_and_claim(store, batch, range(3))
    assert await _add_and_claim(store, batch, range(3), worker="w-2") == {}
    assert await store.batch_item_states(batch.id) == {"running": 3}


async def test_concurrent_calls_claim_each_item_once(store: Store, program: ProgramRecord) -> None:
    total = 120
    batch = await store.create_batch("qa", 1, {}, total=total)
    chunks = [range(start, min(start + 40, total)) for start in range(0, total, 20)]
    results = await asyncio.gather(
        *(_add_and_claim(store, batch, chunk, worker=f"w-{n}") for n, chunk in enumerate(chunks))
    )
    seen: dict[int, str] = {}
    for claimed in results:
        for index, (eid, _) in claimed.items():
            assert index not in seen
            seen[index] = eid
    assert sorted(seen) == list(range(total))
    assert await _ids(store, batch) == seen
    assert await store.batch_item_states(batch.id) == {"running": total}


# -- refusals ------------------------------------------------------------------------------------


async def test_no_items_claims_nothing(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {}, total=0)
    assert await _add_and_claim(store, batch, []) == {}


async def test_an_unknown_batch_raises_not_found(store: Store, program: ProgramRecord) -> None:
    for items in ([], _items([0])):
        with pytest.raises(NotFoundError, match="batch"):
            await store.add_and_claim_batch_items(
                "nope", "qa", 1, items, worker_id="w", lease_seconds=30
            )


async def test_an_unknown_program_version_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    with pytest.raises(NotFoundError, match="program"):
        await store.add_and_claim_batch_items(
            batch.id, "qa", 7, _items([0]), worker_id="w", lease_seconds=30
        )
    assert await batch_executions(store, batch.id) == []


async def test_a_non_positive_lease_is_refused(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    with pytest.raises(ValidationError):
        await store.add_and_claim_batch_items(
            batch.id, "qa", 1, _items([0]), worker_id="w", lease_seconds=0
        )
    assert await batch_executions(store, batch.id) == []


async def test_an_unserialisable_item_writes_nothing_and_claims_nothing(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=3)
    await pending_items(store, clock, batch.id, _items([0]))
    with pytest.raises(StorageError):
        await store.add_and_claim_batch_items(
            batch.id, "qa", 1, [(0, {}), (1, {}), (2, {"x": object()})],
            worker_id="w", lease_seconds=30,
        )  # fmt: skip
    assert await _snapshot(store, batch.id) == [(0, PENDING, 1, {"i": 0}, None)]


# -- SQLite: one writer job per chunk ------------------------------------------------------------


async def test_on_sqlite_a_chunk_is_one_writer_job(tmp_path: Any, clock: FakeClock) -> None:
    async with SqlStore(f"sqlite:///{tmp_path}/dspex.db", clock=clock) as lite:
        await lite.put_program("qa", {}, "hash-1")
        batch = await lite.create_batch("qa", 1, {}, total=300)
        writer = lite._writer
        assert writer is not None
        before = writer.jobs
        claimed = await _add_and_claim(lite, batch, range(200))
        assert writer.jobs - before == 1
        assert len(claimed) == 200
        resumed = await _add_and_claim(lite, batch, range(100, 300), worker="w-2")
        assert writer.jobs - before == 2
        assert sorted(resumed) == list(range(200, 300))

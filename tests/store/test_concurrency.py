"""Concurrent writers never lose a count, and exactly one holder of a lease wins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tests.store._clock import FakeClock, pending_items

from dspex.errors import LeaseLostError
from dspex.records import ExecutionStatus, ProgramRecord
from dspex.store import SqlStore, Store

WRITERS = 60


async def _run_once(store: Store, i: int) -> None:
    started = await store.start_execution("qa", 1, {"i": i}, worker_id=f"w-{i}", lease_seconds=30)
    assert started.lease_token is not None
    status = ExecutionStatus.FAILED if i % 3 == 0 else ExecutionStatus.COMPLETED
    await store.finish_execution(started.id, started.lease_token, status, duration_ms=1.0)


async def test_concurrent_finishes_never_lose_a_count(store: Store, program: ProgramRecord) -> None:
    await asyncio.gather(*(_run_once(store, i) for i in range(WRITERS)))
    counted = await store.get_program("qa")
    assert (counted.execution_count, counted.success_count, counted.failure_count) == (
        WRITERS,
        WRITERS - (WRITERS + 2) // 3,
        (WRITERS + 2) // 3,
    )
    assert counted.total_duration_ms == pytest.approx(float(WRITERS))
    assert len((await store.list_executions(limit=1000)).items) == WRITERS


async def test_only_one_of_many_concurrent_claims_wins(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    await pending_items(store, clock, batch.id, [(0, {})])
    results = await asyncio.gather(
        *(
            store.claim_batch_items(batch.id, [0], worker_id=f"worker-{i}", lease_seconds=30)
            for i in range(20)
        )
    )
    winners = [r[0] for r in results if r]
    assert len(winners) == 1
    execution_id, token = winners[0]
    assert (await store.get_execution(execution_id)).lease_token == token


async def test_concurrent_finishes_with_stale_tokens_never_overwrite_the_holder(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    first = await store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(0, {})], worker_id="worker-1", lease_seconds=30
    )
    execution_id, stale = first[0]
    clock.advance(31)
    second = await store.claim_batch_items(batch.id, [0], worker_id="worker-2", lease_seconds=30)
    fresh = second[0][1]
    stale_finishes = [
        store.finish_execution(
            execution_id, stale, ExecutionStatus.FAILED, error_code="lost", duration_ms=1.0
        )
        for _ in range(20)
    ]
    fresh_finish = store.finish_execution(
        execution_id, fresh, ExecutionStatus.COMPLETED, outputs={"answer": "ok"}, duration_ms=1.0
    )
    results = await asyncio.gather(*stale_finishes, fresh_finish, return_exceptions=True)
    assert all(isinstance(r, LeaseLostError) for r in results[:-1])
    final = await store.get_execution(execution_id)
    assert (final.status, final.outputs, final.worker_id) == (
        ExecutionStatus.COMPLETED,
        {"answer": "ok"},
        "worker-2",
    )
    counted = await store.get_program("qa")
    assert (counted.execution_count, counted.failure_count) == (1, 0)


async def test_concurrent_registrations_of_one_changed_spec_create_one_version(
    store: Store, program: ProgramRecord
) -> None:
    records = await asyncio.gather(
        *(store.put_program("qa", {"modules": ["a", "b"]}, "hash-2") for _ in range(10))
    )
    assert {r.version for r in records} == {2}
    assert len(await store.list_programs(all_versions=True)) == 2


async def test_two_stores_on_one_sqlite_file_never_lose_a_count(tmp_path: Path) -> None:
    # Two stores have separate pools and locks, like two processes: only SQLite serialises them.
    url = f"sqlite:///{tmp_path}/shared.db"
    async with SqlStore(url) as first, SqlStore(url) as second:
        await first.put_program("qa", {}, "h1")
        await asyncio.gather(*(_run_once(first if i % 2 else second, i) for i in range(WRITERS)))
        assert (await second.get_program("qa")).execution_count == WRITERS

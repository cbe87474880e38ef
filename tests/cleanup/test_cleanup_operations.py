"""Cleanup's operations on every store: batches whose driver died, retention of finished batches
and of the breaker rows of removed backends, and SQLite giving space back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.store._clock import FakeClock, pending_items

from dspex.actions.cleanup import cleanup
from dspex.errors import NotFoundError
from dspex.records import BatchStatus, BreakerRecord, ExecutionStatus
from dspex.store import Store
from dspex.store.sql import SqlStore

DAY = 86_400.0


async def _dead_driver(store: Store, clock: FakeClock) -> str:
    """A batch of 3: one item done, one pending, one never created; its driver is gone."""
    batch = await store.create_batch(
        "qa", 1, {"input": {"kind": "jsonl", "path": "/data/items.jsonl"}}, 3
    )
    await store.set_batch_status(batch.id, BatchStatus.RUNNING)
    await pending_items(store, clock, batch.id, [(1, {})])
    claimed = await store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(0, {})], worker_id="w", lease_seconds=30
    )
    execution_id, token = claimed[0]
    await store.finish_execution(execution_id, token, ExecutionStatus.COMPLETED)
    clock.advance(3600)
    return batch.id


async def test_a_batch_whose_driver_died_is_failed_and_its_resume_command_reported(
    store: Store, clock: FakeClock
) -> None:
    batch_id = await _dead_driver(store, clock)
    report = await cleanup(store)
    assert report.batches_stalled.ids == [batch_id]
    assert report.resume_commands == [f"dspex batch qa /data/items.jsonl --resume {batch_id}"]
    batch = await store.get_batch(batch_id)
    assert (batch.status, batch.completed, batch.failed) == (BatchStatus.FAILED, 1, 0)
    assert (await cleanup(store)).batches_stalled.count == 0  # failed once


async def test_a_dry_run_names_the_dead_drivers_batch_and_changes_nothing(
    store: Store, clock: FakeClock
) -> None:
    batch_id = await _dead_driver(store, clock)
    preview = await cleanup(store, dry_run=True)
    assert preview.batches_stalled.ids == [batch_id]
    assert (await store.get_batch(batch_id)).status is BatchStatus.RUNNING


async def test_a_batch_with_an_item_under_a_live_lease_is_not_stalled(
    store: Store, clock: FakeClock
) -> None:
    batch_id = await _dead_driver(store, clock)
    await store.claim_batch_items(batch_id, [1], worker_id="w", lease_seconds=30)
    assert (await cleanup(store)).batches_stalled.count == 0
    assert (await store.get_batch(batch_id)).status is BatchStatus.RUNNING


async def test_a_batch_active_lately_is_not_stalled(store: Store, clock: FakeClock) -> None:
    batch_id = await _dead_driver(store, clock)
    assert (await cleanup(store, stalled_after=2 * 3600)).batches_stalled.count == 0
    assert (await store.get_batch(batch_id)).status is BatchStatus.RUNNING


async def test_retention_deletes_finished_batches_with_their_items(
    store: Store, clock: FakeClock
) -> None:
    old = await store.create_batch("qa", 1, {}, 1)
    [(item, token)] = (
        await store.add_and_claim_batch_items(
            old.id, "qa", 1, [(0, {})], worker_id="w", lease_seconds=30
        )
    ).values()
    await store.finish_execution(item, token, ExecutionStatus.COMPLETED)
    await cleanup(store)  # finishes the batch
    assert (await store.get_batch(old.id)).status is BatchStatus.COMPLETED
    clock.advance(2 * DAY)
    running = await store.create_batch("qa", 1, {}, 1)
    preview = await cleanup(store, dry_run=True, older_than=DAY)
    assert preview.batches_deleted.ids == [old.id]
    report = await cleanup(store, older_than=DAY)
    assert report.batches_deleted.ids == [old.id]
    with pytest.raises(NotFoundError):
        await store.get_batch(old.id)
    with pytest.raises(NotFoundError):
        await store.get_execution(item)
    assert (await store.get_batch(running.id)).status is BatchStatus.PENDING


async def test_deleting_a_finished_batch_takes_its_remaining_items_along(
    store: Store, clock: FakeClock
) -> None:
    batch = await store.create_batch("qa", 1, {}, 1)
    [(item, token)] = (
        await store.add_and_claim_batch_items(
            batch.id, "qa", 1, [(0, {})], worker_id="w", lease_seconds=30
        )
    ).values()
    await store.finish_execution(item, token, ExecutionStatus.COMPLETED)
    await store.finalize_batches()
    clock.advance(DAY)
    # the store's own step, without deleting old executions first
    assert await store.delete_batches(clock.now, dry_run=True) == (1, [batch.id])
    assert await store.delete_batches(clock.now) == (1, [batch.id])
    with pytest.raises(NotFoundError):
        await store.get_execution(item)
    assert await store.delete_batches(clock.now) == (0, [])


async def test_retention_deletes_the_breaker_rows_of_backends_no_longer_configured(
    store: Store,
) -> None:
    for name in ("kept", "removed", "gone"):
        await store.save_breaker(BreakerRecord(name, "open", failure_count=3))
    preview = await cleanup(store, dry_run=True, older_than=DAY, backends={"kept"})
    assert preview.breakers_deleted.ids == ["gone", "removed"]
    assert len(await store.list_breakers()) == 3
    report = await cleanup(store, older_than=DAY, backends={"kept"})
    assert report.breakers_deleted.ids == ["gone", "removed"]
    assert [b.backend for b in await store.list_breakers()] == ["kept"]
    # without retention, or without knowing the backends, breaker rows are kept
    assert (await cleanup(store, backends=set())).breakers_deleted.count == 0
    assert (await cleanup(store, older_than=DAY)).breakers_deleted.count == 0


# --- SQLite gives space back ---------------------------------------------------------------------


async def _fill_and_age(store: Store, clock: FakeClock, n: int = 300) -> None:
    for _ in range(n):
        run = await store.start_execution(
            "qa", 1, {"text": "x" * 2000}, worker_id="w", lease_seconds=30
        )
        await store.finish_execution(run.id, run.lease_token or "", ExecutionStatus.COMPLETED)
    clock.advance(2 * DAY)


def _auto_vacuum(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0])


async def test_a_new_sqlite_database_gives_the_space_of_retention_deletes_back(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "new.db"
    async with SqlStore(f"sqlite:///{path}", clock=clock) as store:
        await store.put_program("qa", {"modules": ["answer"]}, "hash-1")
        assert _auto_vacuum(path) == 2  # incremental
        await _fill_and_age(store, clock)
        report = await cleanup(store, older_than=DAY)
    assert report.executions_deleted.count == 300
    assert report.space is not None
    assert report.space.auto_vacuum == "incremental"
    assert report.space.freed_bytes > 300 * 2000
    assert not report.space.vacuum_needed


async def test_an_older_sqlite_file_reports_that_vacuum_is_needed_and_vacuum_converts_it(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "old.db"
    async with SqlStore(f"sqlite:///{path}", clock=clock) as store:
        await store.put_program("qa", {"modules": ["answer"]}, "hash-1")
    with sqlite3.connect(path, isolation_level=None) as conn:  # as made before this existed
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
    assert _auto_vacuum(path) == 0
    async with SqlStore(f"sqlite:///{path}", clock=clock) as store:
        await _fill_and_age(store, clock)
        report = await cleanup(store, older_than=DAY)
        assert report.space is not None
        assert (report.space.auto_vacuum, report.space.vacuum_needed) == ("none", True)
        assert report.space.freed_bytes == 0
        assert report.space.free_bytes > 300 * 2000
        size = path.stat().st_size
        vacuumed = await cleanup(store, vacuum=True)
        assert vacuumed.space is not None
        assert (vacuumed.space.vacuumed, vacuumed.space.vacuum_needed) == (True, False)
        assert vacuumed.space.freed_bytes > 300 * 2000
        assert await store.list_breakers() == []  # the store still works after the rebuild
    assert _auto_vacuum(path) == 2
    assert path.stat().st_size < size


async def test_other_stores_have_no_space_to_give_back(store: Store, clock: FakeClock) -> None:
    report = await cleanup(store, older_than=DAY)
    if isinstance(store, SqlStore) and store.dialect == "sqlite":
        assert report.space is not None
    else:
        assert report.space is None
    assert (await cleanup(store, dry_run=True, older_than=DAY)).space is None

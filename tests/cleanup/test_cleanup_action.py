"""The cleanup operation: categories, dry runs that match real runs, chunks, validation."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store._clock import FakeClock

from dspex.actions.cleanup import cleanup, parse_age
from dspex.errors import ValidationError
from dspex.records import BatchStatus, ExecutionStatus, ProgramStatus
from dspex.store import Store


async def _scene(store: Store, clock: FakeClock) -> dict[str, str]:
    """One of everything cleanup repairs, all old enough."""
    batch = await store.create_batch("qa", 1, {}, 2)
    done = await store.start_execution(
        "qa", 1, {}, worker_id="w", lease_seconds=30, batch_id=batch.id, batch_index=0
    )
    await store.finish_execution(done.id, done.lease_token or "", ExecutionStatus.COMPLETED)
    item = await store.start_execution(
        "qa", 1, {}, worker_id="w", lease_seconds=30, batch_id=batch.id, batch_index=1
    )
    alone = await store.start_execution("qa", 1, {}, worker_id="w", lease_seconds=30)
    old = await store.start_execution("qa", 1, {}, worker_id="w", lease_seconds=30)
    await store.finish_execution(old.id, old.lease_token or "", ExecutionStatus.FAILED)
    await store.put_program("stuck", {"modules": []}, "s")
    await store.set_program_status("stuck", 1, ProgramStatus.INITIALIZING)
    clock.advance(3 * 86_400)
    return {"batch": batch.id, "item": item.id, "alone": alone.id, "old": old.id, "done": done.id}


async def test_cleanup_repairs_every_category(store: Store, clock: FakeClock) -> None:
    ids = await _scene(store, clock)
    report = await cleanup(store, older_than=timedelta(days=1), attempt_cap=1)
    assert not report.dry_run
    assert report.requeued.count == 0
    assert sorted(report.lease_expired.ids) == sorted([ids["item"], ids["alone"]])
    assert report.batches_finalized.ids == [ids["batch"]]
    assert report.programs_errored.ids == ["stuck v1"]
    assert sorted(report.executions_deleted.ids) == sorted([ids["old"], ids["done"]])
    assert report.total == 6
    assert (await store.get_batch(ids["batch"])).status is BatchStatus.FAILED


async def test_a_dry_run_reports_exactly_what_the_real_run_then_does(
    store: Store, clock: FakeClock
) -> None:
    ids = await _scene(store, clock)
    preview = await cleanup(store, dry_run=True, older_than=86_400.0, attempt_cap=1)
    assert (await store.get_execution(ids["alone"])).status is ExecutionStatus.RUNNING
    assert (await store.get_batch(ids["batch"])).status is BatchStatus.PENDING
    real = await cleanup(store, older_than=86_400.0, attempt_cap=1)
    for key in (
        "requeued",
        "lease_expired",
        "batches_finalized",
        "programs_errored",
        "executions_deleted",
    ):
        assert sorted(getattr(preview, key).ids) == sorted(getattr(real, key).ids), key
    assert preview.dry_run
    assert not real.dry_run


async def test_a_batch_item_below_the_cap_is_requeued_and_its_batch_stays_open(
    store: Store, clock: FakeClock
) -> None:
    ids = await _scene(store, clock)
    report = await cleanup(store)
    assert report.requeued.ids == [ids["item"]]
    assert report.lease_expired.ids == [ids["alone"]]
    assert report.batches_finalized.count == 0
    assert report.executions_deleted.count == 0
    assert report.retention_cutoff is None


async def test_cleanup_works_through_more_rows_than_one_chunk(
    store: Store, clock: FakeClock
) -> None:
    for _ in range(5):
        await store.start_execution("qa", 1, {}, worker_id="w", lease_seconds=30)
    clock.advance(60)
    report = await cleanup(store, chunk=2)
    assert report.lease_expired.count == 5


async def test_a_second_cleanup_finds_nothing_left(store: Store, clock: FakeClock) -> None:
    await _scene(store, clock)
    await cleanup(store, older_than=86_400.0)
    assert (await cleanup(store, older_than=86_400.0)).total == 0


@pytest.mark.parametrize(
    "options",
    [{"attempt_cap": 0}, {"older_than": -1.0}, {"stuck_initializing_after": -1.0}, {"chunk": 0}],
)
async def test_bad_options_are_rejected_before_touching_the_store(
    store: Store, options: dict[str, float]
) -> None:
    with pytest.raises(ValidationError):
        await cleanup(store, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2_592_000), ("12h", 43_200), ("90m", 5_400), ("1.5s", 1.5), ("0d", 0), ("0h", 0)],
)
def test_ages_read_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "d", "3x", "-1d", "-0.5h", "infd", "nand"])
def test_anything_else_is_not_an_age(text: str) -> None:
    with pytest.raises(ValidationError, match="not an age"):
        parse_age(text)

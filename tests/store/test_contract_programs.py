"""The Store contract for signatures, programs, batches and breakers (every implementation)."""

from __future__ import annotations

import pytest
from tests.store._clock import FakeClock

from dspex.errors import NotFoundError, ProgramStateError, StorageError
from dspex.records import (
    BatchStatus,
    BreakerRecord,
    ExecutionStatus,
    ProgramRecord,
    ProgramStatus,
)
from dspex.store import Store

# -- signatures --------------------------------------------------------------------------------


async def test_signature_round_trips_its_spec(store: Store) -> None:
    spec = {"inputs": [{"name": "q", "type": "str"}], "outputs": [{"name": "a", "type": "str"}]}
    await store.put_signature("qa", spec)
    assert (await store.get_signature("qa")).spec == spec


async def test_putting_a_signature_again_replaces_its_spec_and_keeps_its_creation_time(
    store: Store,
) -> None:
    first = await store.put_signature("qa", {"v": 1})
    second = await store.put_signature("qa", {"v": 2})
    assert second.spec == {"v": 2}
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at
    assert [s.name for s in await store.list_signatures()] == ["qa"]


async def test_signatures_are_listed_by_name(store: Store) -> None:
    for name in ("b", "c", "a"):
        await store.put_signature(name, {})
    assert [s.name for s in await store.list_signatures()] == ["a", "b", "c"]


async def test_missing_signature_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.get_signature("nope")


# -- programs ----------------------------------------------------------------------------------


async def test_first_registration_creates_version_one_in_draft(store: Store) -> None:
    record = await store.put_program("qa", {"modules": ["a"]}, "h1")
    assert (record.version, record.status, record.spec_hash) == (1, ProgramStatus.DRAFT, "h1")
    assert (record.execution_count, record.success_rate, record.mean_duration_ms) == (0, None, None)
    assert record.created_at.tzinfo is not None


async def test_registering_an_unchanged_spec_returns_the_same_version(store: Store) -> None:
    first = await store.put_program("qa", {"modules": ["a"]}, "h1")
    again = await store.put_program("qa", {"modules": ["a"]}, "h1")
    assert again == first


async def test_registering_a_changed_spec_creates_the_next_version(store: Store) -> None:
    await store.put_program("qa", {"modules": ["a"]}, "h1")
    second = await store.put_program("qa", {"modules": ["a", "b"]}, "h2")
    assert second.version == 2
    assert (await store.get_program("qa")).version == 2
    assert (await store.get_program("qa", 1)).spec == {"modules": ["a"]}


async def test_missing_program_or_version_raises_not_found(store: Store) -> None:
    await store.put_program("qa", {}, "h1")
    with pytest.raises(NotFoundError):
        await store.get_program("other")
    with pytest.raises(NotFoundError):
        await store.get_program("qa", 2)


async def test_list_programs_gives_the_newest_version_of_each_by_name(store: Store) -> None:
    await store.put_program("zeta", {}, "z1")
    await store.put_program("alpha", {}, "a1")
    await store.put_program("alpha", {"x": 1}, "a2")
    newest = await store.list_programs()
    assert [(p.name, p.version) for p in newest] == [("alpha", 2), ("zeta", 1)]
    every = await store.list_programs(all_versions=True)
    assert [(p.name, p.version) for p in every] == [("alpha", 1), ("alpha", 2), ("zeta", 1)]


async def test_program_walks_its_lifecycle(store: Store, program: ProgramRecord) -> None:
    for status in (ProgramStatus.INITIALIZING, ProgramStatus.READY, ProgramStatus.ARCHIVED):
        record = await store.set_program_status("qa", 1, status)
        assert record.status is status
    assert (await store.get_program("qa")).status is ProgramStatus.ARCHIVED


async def test_error_status_keeps_its_reason_until_the_next_transition(
    store: Store, program: ProgramRecord
) -> None:
    await store.set_program_status("qa", 1, ProgramStatus.INITIALIZING)
    failed = await store.set_program_status("qa", 1, ProgramStatus.ERROR, error="no backend")
    assert failed.error == "no backend"
    retried = await store.set_program_status("qa", 1, ProgramStatus.INITIALIZING, error="ignored")
    assert retried.error is None


async def test_illegal_transition_raises_program_state_error_naming_the_status(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(ProgramStateError) as caught:
        await store.set_program_status("qa", 1, ProgramStatus.READY)
    assert caught.value.status == "draft"
    assert (await store.get_program("qa")).status is ProgramStatus.DRAFT


async def test_transition_with_wrong_expected_status_changes_nothing(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(ProgramStateError):
        await store.set_program_status(
            "qa", 1, ProgramStatus.ARCHIVED, expected=ProgramStatus.READY
        )
    assert (await store.get_program("qa")).status is ProgramStatus.DRAFT


async def test_transition_with_matching_expected_status_applies(
    store: Store, program: ProgramRecord
) -> None:
    record = await store.set_program_status(
        "qa", 1, ProgramStatus.INITIALIZING, expected=ProgramStatus.DRAFT
    )
    assert record.status is ProgramStatus.INITIALIZING


async def test_status_change_of_a_missing_program_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.set_program_status("nope", 1, ProgramStatus.INITIALIZING)


async def test_counters_track_successes_failures_and_duration(
    store: Store, program: ProgramRecord
) -> None:
    await store.bump_program_counters("qa", 1, succeeded=True, duration_ms=10.0)
    await store.bump_program_counters("qa", 1, succeeded=True, duration_ms=20.0)
    await store.bump_program_counters("qa", 1, succeeded=False, duration_ms=30.0)
    record = await store.get_program("qa")
    assert (record.execution_count, record.success_count, record.failure_count) == (3, 2, 1)
    assert record.total_duration_ms == pytest.approx(60.0)
    assert record.success_rate == pytest.approx(2 / 3)
    assert record.mean_duration_ms == pytest.approx(20.0)


async def test_bumping_counters_of_a_missing_program_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.bump_program_counters("nope", 1, succeeded=True, duration_ms=1.0)


async def test_unserialisable_spec_raises_storage_error(store: Store) -> None:
    with pytest.raises(StorageError):
        await store.put_program("qa", {"bad": object()}, "h1")


# -- batches -----------------------------------------------------------------------------------


async def test_batch_starts_pending_with_zero_counts(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {"max_concurrency": 4}, total=3)
    assert (batch.status, batch.total, batch.remaining) == (BatchStatus.PENDING, 3, 3)
    assert await store.get_batch(batch.id) == batch


async def test_batch_counts_add_up(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {}, total=5)
    await store.update_batch_counts(batch.id, completed=2)
    updated = await store.update_batch_counts(batch.id, completed=1, failed=1, cancelled=1)
    assert (updated.completed, updated.failed, updated.cancelled, updated.remaining) == (3, 1, 1, 0)


async def test_terminal_batch_status_sets_finished_at(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    running = await store.set_batch_status(batch.id, BatchStatus.RUNNING)
    assert running.finished_at is None
    done = await store.set_batch_status(batch.id, BatchStatus.COMPLETED)
    assert done.status is BatchStatus.COMPLETED
    assert done.finished_at is not None


async def test_batch_of_a_missing_program_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.create_batch("nope", 1, {}, total=1)


async def test_missing_batch_raises_not_found_everywhere(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.get_batch("nope")
    with pytest.raises(NotFoundError):
        await store.update_batch_counts("nope", completed=1)
    with pytest.raises(NotFoundError):
        await store.set_batch_status("nope", BatchStatus.RUNNING)
    with pytest.raises(NotFoundError):
        await store.list_batch_executions("nope")


async def test_batches_are_listed_newest_first_and_filtered_by_status(
    store: Store, program: ProgramRecord
) -> None:
    first = await store.create_batch("qa", 1, {}, total=1)
    second = await store.create_batch("qa", 1, {}, total=1)
    await store.set_batch_status(first.id, BatchStatus.RUNNING)
    assert [b.id for b in await store.list_batches()] == [second.id, first.id]
    running = await store.list_batches(statuses=[BatchStatus.RUNNING])
    assert [b.id for b in running] == [first.id]


async def test_batch_executions_come_back_in_batch_index_order(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=3)
    for index in (2, 0, 1):
        await store.create_execution("qa", 1, {"i": index}, batch_id=batch.id, batch_index=index)
    unindexed = await store.create_execution("qa", 1, {"i": None}, batch_id=batch.id)
    await store.create_execution("qa", 1, {"i": "elsewhere"})
    found = await store.list_batch_executions(batch.id)
    assert [e.batch_index for e in found] == [0, 1, 2, None]
    assert found[-1].id == unindexed.id


async def test_execution_in_a_missing_batch_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.create_execution("qa", 1, {}, batch_id="nope", batch_index=0)


async def test_recorded_execution_in_a_missing_batch_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.record_execution(
            "qa", 1, {}, ExecutionStatus.COMPLETED, batch_id="nope", batch_index=0
        )


# -- breakers ----------------------------------------------------------------------------------


async def test_breaker_state_is_saved_replaced_and_listed_by_backend(
    store: Store, clock: FakeClock
) -> None:
    opened = clock()
    await store.save_breaker(BreakerRecord("openai", "open", failure_count=5, opened_at=opened))
    await store.save_breaker(BreakerRecord("anthropic", "closed", success_count=3))
    await store.save_breaker(
        BreakerRecord("openai", "half_open", failure_count=5, opened_at=opened)
    )
    breakers = await store.list_breakers()
    assert [(b.backend, b.state) for b in breakers] == [
        ("anthropic", "closed"),
        ("openai", "half_open"),
    ]
    assert breakers[1].opened_at == opened
    assert breakers[1].updated_at is not None


# -- lifecycle ---------------------------------------------------------------------------------


async def test_ping_reports_a_latency_in_milliseconds(store: Store) -> None:
    latency = await store.ping()
    assert 0.0 <= latency < 5_000.0


async def test_a_fresh_store_is_at_the_newest_schema(store: Store) -> None:
    assert await store.is_current()
    assert await store.schema_revision() is not None

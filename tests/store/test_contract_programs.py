"""The ProgramStore contract: program versions and their lifecycle (every implementation)."""

from __future__ import annotations

import pytest

from dspex.errors import NotFoundError, ProgramStateError, StorageError
from dspex.records import ExecutionStatus, ProgramRecord, ProgramStatus
from dspex.store import Store

COMPLETED = ExecutionStatus.COMPLETED
FAILED = ExecutionStatus.FAILED


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
    for status, duration in ((COMPLETED, 10.0), (COMPLETED, 20.0), (FAILED, 30.0)):
        started = await store.start_execution("qa", 1, {}, worker_id="w", lease_seconds=30)
        assert started.lease_token is not None
        await store.finish_execution(started.id, started.lease_token, status, duration_ms=duration)
    record = await store.get_program("qa")
    assert (record.execution_count, record.success_count, record.failure_count) == (3, 2, 1)
    assert record.total_duration_ms == pytest.approx(60.0)
    assert record.success_rate == pytest.approx(2 / 3)
    assert record.mean_duration_ms == pytest.approx(20.0)


async def test_unserialisable_spec_raises_storage_error(store: Store) -> None:
    with pytest.raises(StorageError):
        await store.put_program("qa", {"bad": object()}, "h1")

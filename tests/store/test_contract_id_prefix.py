"""The Store contract for id prefixes (every implementation): the ids that start with a prefix,
in id order, as ``git`` finds an object by a short hash; and batches filtered by program."""

from __future__ import annotations

import pytest

from dspex.errors import ValidationError
from dspex.records import ProgramRecord
from dspex.store import Store

IDS = ("0190aaaa-0001", "0190aaab-0002", "0190bbbb-0003")


async def _batches(store: Store, ids: tuple[str, ...] = IDS) -> None:
    for batch_id in ids:
        await store.create_batch("qa", 1, {}, total=1, batch_id=batch_id)


async def test_a_unique_prefix_matches_one_batch(store: Store, program: ProgramRecord) -> None:
    await _batches(store)
    assert await store.match_ids("batch", "0190b") == ["0190bbbb-0003"]


async def test_a_shared_prefix_matches_every_candidate_in_id_order(
    store: Store, program: ProgramRecord
) -> None:
    await _batches(store, tuple(reversed(IDS)))
    assert await store.match_ids("batch", "0190aaa") == ["0190aaaa-0001", "0190aaab-0002"]


async def test_a_full_id_matches_itself(store: Store, program: ProgramRecord) -> None:
    await _batches(store)
    assert await store.match_ids("batch", "0190aaab-0002") == ["0190aaab-0002"]


async def test_a_prefix_nothing_starts_with_matches_nothing(
    store: Store, program: ProgramRecord
) -> None:
    await _batches(store)
    assert await store.match_ids("batch", "0190c") == []
    assert await store.match_ids("batch", "0190aaaa-00010") == []


async def test_the_limit_keeps_the_first_matches(store: Store, program: ProgramRecord) -> None:
    await _batches(store)
    assert await store.match_ids("batch", "0190", limit=2) == list(IDS[:2])


async def test_prefixes_are_case_sensitive(store: Store, program: ProgramRecord) -> None:
    await _batches(store, ("abcd-1", "ABCD-2"))
    assert await store.match_ids("batch", "ab") == ["abcd-1"]
    assert await store.match_ids("batch", "AB") == ["ABCD-2"]


async def test_like_wildcards_in_a_prefix_are_plain_characters(
    store: Store, program: ProgramRecord
) -> None:
    await _batches(store, ("a%b", "a_b", "axb", "a/b", "a\\b"))
    assert await store.match_ids("batch", "a_") == ["a_b"]
    assert await store.match_ids("batch", "a%") == ["a%b"]
    assert await store.match_ids("batch", "a/") == ["a/b"]
    assert await store.match_ids("batch", "a\\") == ["a\\b"]


async def test_execution_and_batch_ids_are_looked_up_apart(
    store: Store, program: ProgramRecord
) -> None:
    await _batches(store)
    execution = await store.start_execution(
        "qa", 1, {}, worker_id="w", lease_seconds=30, execution_id="0190aaac-0004"
    )
    assert await store.match_ids("execution", "0190") == [execution.id]
    assert await store.match_ids("batch", "0190aaac") == []


async def test_an_empty_prefix_or_a_limit_below_one_is_refused(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(ValidationError):
        await store.match_ids("batch", "")
    with pytest.raises(ValidationError):
        await store.match_ids("batch", "0190", limit=0)


async def test_batches_are_filtered_by_program(store: Store, program: ProgramRecord) -> None:
    await store.put_program("other", {"modules": ["x"]}, "hash-2")
    mine = await store.create_batch("qa", 1, {}, total=1)
    theirs = await store.create_batch("other", 1, {}, total=1)
    assert [b.id for b in await store.list_batches(program="qa")] == [mine.id]
    assert [b.id for b in await store.list_batches(program="other")] == [theirs.id]
    assert await store.list_batches(program="nope") == []

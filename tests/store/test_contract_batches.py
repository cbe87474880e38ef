"""The BatchStore contract for batch records (every implementation); their items are in
``test_contract_batches_items.py`` and ``test_contract_batches_add_and_claim.py``."""

from __future__ import annotations

import pytest

from dspex.errors import NotFoundError
from dspex.records import BatchStatus, ProgramRecord
from dspex.store import Store


async def test_batch_starts_pending_with_zero_counts(store: Store, program: ProgramRecord) -> None:
    batch = await store.create_batch("qa", 1, {"max_concurrency": 4}, total=3)
    assert (batch.status, batch.total, batch.remaining) == (BatchStatus.PENDING, 3, 3)
    assert await store.get_batch(batch.id) == batch


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
        await store.set_batch_status("nope", BatchStatus.RUNNING)


async def test_batches_are_listed_newest_first_and_filtered_by_status(
    store: Store, program: ProgramRecord
) -> None:
    first = await store.create_batch("qa", 1, {}, total=1)
    second = await store.create_batch("qa", 1, {}, total=1)
    await store.set_batch_status(first.id, BatchStatus.RUNNING)
    assert [b.id for b in await store.list_batches()] == [second.id, first.id]
    running = await store.list_batches(statuses=[BatchStatus.RUNNING])
    assert [b.id for b in running] == [first.id]


async def test_execution_in_a_missing_batch_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.start_execution(
            "qa", 1, {}, worker_id="w", lease_seconds=30, batch_id="nope", batch_index=0
        )

"""The EvaluationStore contract and the promotions of ProgramStore (every implementation)."""

from __future__ import annotations

import pytest
from tests.store._clock import FakeClock

from dspex.errors import NotFoundError, ProgramStateError, StorageError
from dspex.records import EvaluationStatus, ExecutionStatus, ItemScore, ProgramRecord
from dspex.store import Store


async def _evaluation(store: Store, *, metric: str = "exact_match", devset: str = "h1") -> str:
    batch = await store.create_batch("qa", 1, {}, total=3)
    record = await store.create_evaluation(
        program="qa",
        version=1,
        metric=metric,
        devset_hash=devset,
        devset="dev.jsonl",
        batch_id=batch.id,
        total=3,
    )
    return record.id


async def test_an_evaluation_is_created_running_and_found_by_its_batch(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=2)
    created = await store.create_evaluation(
        program="qa",
        version=1,
        metric="f1",
        devset_hash="abc",
        devset="dev.jsonl",
        batch_id=batch.id,
        total=2,
    )
    assert created.status is EvaluationStatus.RUNNING
    assert (created.score, created.failed, created.finished_at) == (None, None, None)
    assert await store.get_evaluation(created.id) == created
    assert await store.evaluation_for_batch(batch.id) == created
    assert await store.evaluation_for_batch("no-such-batch") is None
    with pytest.raises(StorageError, match="already has an evaluation"):
        await store.create_evaluation(
            program="qa",
            version=1,
            metric="f1",
            devset_hash="abc",
            devset="dev.jsonl",
            batch_id=batch.id,
            total=2,
        )


async def test_an_evaluation_needs_its_program_version_and_batch(
    store: Store, program: ProgramRecord
) -> None:
    batch = await store.create_batch("qa", 1, {}, total=1)
    with pytest.raises(NotFoundError):
        await store.create_evaluation(
            program="qa",
            version=9,
            metric="f1",
            devset_hash="h",
            devset="d",
            batch_id=batch.id,
            total=1,
        )
    with pytest.raises(NotFoundError, match="batch"):
        await store.create_evaluation(
            program="qa",
            version=1,
            metric="f1",
            devset_hash="h",
            devset="d",
            batch_id="nope",
            total=1,
        )
    with pytest.raises(NotFoundError):
        await store.get_evaluation("nope")


async def test_item_scores_are_overwritten_when_scored_again_and_read_in_index_order(
    store: Store, program: ProgramRecord
) -> None:
    evaluation = await _evaluation(store)
    await store.put_item_scores(
        evaluation, [ItemScore(2, "e2", "failed", 0.0), ItemScore(0, "e0", "completed", 1.0)]
    )
    await store.put_item_scores(
        evaluation, [ItemScore(2, "e2b", "completed", 0.5), ItemScore(1, None, "cancelled", 0.0)]
    )
    scores = [s async for s in store.iter_item_scores(evaluation)]
    assert scores == [
        ItemScore(0, "e0", "completed", 1.0),
        ItemScore(1, None, "cancelled", 0.0),
        ItemScore(2, "e2b", "completed", 0.5),
    ]
    with pytest.raises(NotFoundError):
        await store.put_item_scores("nope", [ItemScore(0, None, "failed", 0.0)])


async def test_thousands_of_item_scores_are_stored_in_one_call_and_the_last_of_an_index_wins(
    store: Store, program: ProgramRecord
) -> None:
    evaluation = await _evaluation(store)
    many = [ItemScore(i, f"e{i}", "completed", (i % 4) / 4) for i in range(2_500)]
    await store.put_item_scores(evaluation, [*many, ItemScore(7, "again", "failed", 0.0)])
    await store.put_item_scores(evaluation, [])
    scores = [s async for s in store.iter_item_scores(evaluation)]
    assert len(scores) == 2_500
    assert scores[7] == ItemScore(7, "again", "failed", 0.0)
    assert scores[:7] + scores[8:] == many[:7] + many[8:]


async def test_a_finished_evaluation_is_found_for_reuse_by_version_metric_and_devset(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    older = await _evaluation(store)
    running = await _evaluation(store)  # never finished: not reusable
    other_metric = await _evaluation(store, metric="f1")
    assert await store.find_evaluation("qa", 1, "exact_match", "h1") is None
    await store.finish_evaluation(older, score=0.5, failed=1)
    await store.finish_evaluation(other_metric, score=0.9, failed=0)
    clock.advance(5)
    newer = await _evaluation(store)
    done = await store.finish_evaluation(newer, score=0.75, failed=0)
    assert done.status is EvaluationStatus.COMPLETED
    assert (done.score, done.failed) == (0.75, 0)
    assert done.finished_at is not None
    found = await store.find_evaluation("qa", 1, "exact_match", "h1")
    assert found is not None
    assert found.id == newer
    assert await store.find_evaluation("qa", 1, "exact_match", "other-devset") is None
    listed = await store.list_evaluations("qa")
    assert listed[0].id == newer
    assert {e.id for e in listed} == {older, running, other_metric, newer}
    assert await store.list_evaluations("qa", version=2) == []
    assert len(await store.list_evaluations("qa", limit=2)) == 2
    with pytest.raises(NotFoundError):
        await store.finish_evaluation("nope", score=1.0, failed=0)


# ------------------------------------------------------------------------------- promotions


async def test_nothing_is_current_until_a_version_is_promoted(
    store: Store, program: ProgramRecord
) -> None:
    assert await store.current_version("qa") is None
    assert await store.list_promotions("qa") == []


async def test_promotions_move_the_pointer_and_are_recorded_newest_first(
    store: Store, program: ProgramRecord
) -> None:
    await store.put_program("qa", {"modules": ["v2"]}, "hash-2")
    first = await store.promote(
        "qa",
        2,
        forced=False,
        promoted_by="alice",
        metric="f1",
        devset_hash="h",
        score=0.8,
        previous_score=0.6,
        min_improvement=0.1,
    )
    assert (first.version, first.previous_version, first.forced) == (2, None, False)
    assert (first.score, first.previous_score, first.min_improvement) == (0.8, 0.6, 0.1)
    assert await store.current_version("qa") == 2
    rollback = await store.promote("qa", 1, forced=True, promoted_by="bob", expected_current=2)
    assert (rollback.version, rollback.previous_version, rollback.forced) == (1, 2, True)
    assert rollback.metric is None
    assert await store.current_version("qa") == 1
    history = await store.list_promotions("qa")
    assert [(p.version, p.promoted_by) for p in history] == [(1, "bob"), (2, "alice")]
    assert [p.version for p in await store.list_promotions("qa", limit=1)] == [1]


async def test_a_promotion_is_refused_when_the_pointer_moved_meanwhile(
    store: Store, program: ProgramRecord
) -> None:
    await store.promote("qa", 1, forced=False, promoted_by="a")
    with pytest.raises(ProgramStateError, match="changed to v1"):
        await store.promote("qa", 1, forced=False, promoted_by="b", expected_current=None)
    assert len(await store.list_promotions("qa")) == 1


async def test_promoting_a_missing_version_raises_not_found(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.promote("qa", 5, forced=True, promoted_by="a")
    with pytest.raises(NotFoundError):
        await store.promote("nope", 1, forced=True, promoted_by="a")


async def test_an_execution_asking_for_the_default_version_needs_the_current_one(
    store: Store, program: ProgramRecord
) -> None:
    """With a promoted version, the default is the current one, not the newest."""
    await store.put_program("qa", {"modules": ["v2"]}, "hash-2")
    await store.promote("qa", 1, forced=True, promoted_by="a")
    started = await store.start_execution(
        "qa", 1, {}, worker_id="w-1", lease_seconds=30.0, require_latest=True
    )
    assert started.status is ExecutionStatus.RUNNING
    with pytest.raises(ProgramStateError, match="not the current version"):
        await store.start_execution(
            "qa", 2, {}, worker_id="w-1", lease_seconds=30.0, require_latest=True
        )

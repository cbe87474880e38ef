"""The OptimizationStore contract: optimization runs and their trials (every implementation)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store._clock import FakeClock

from dspex.errors import NotFoundError, StorageError, ValidationError
from dspex.records import OptimizationStatus, OptimizationTrial, ProgramRecord
from dspex.store import Store
from dspex.store.optimizations import NewOptimization


def _new(**changes: object) -> NewOptimization:
    values: dict[str, object] = {
        "program": "qa",
        "program_version": 1,
        "optimizer": "bootstrap_few_shot",
        "metric": "exact_match",
        "trainset_hash": "a" * 64,
        "trainset_size": 12,
        "valset_size": 12,
        "seed": 7,
        "settings": {"max_bootstrapped_demos": 4},
    }
    values.update(changes)
    return NewOptimization(**values)  # type: ignore[arg-type]


async def test_a_new_run_is_running_with_what_it_was_created_with(
    store: Store, program: ProgramRecord
) -> None:
    record = await store.create_optimization(_new(valset_hash="b" * 64, valset_size=5))
    assert record.status is OptimizationStatus.RUNNING
    assert (record.program, record.program_version, record.optimizer) == (
        "qa",
        1,
        "bootstrap_few_shot",
    )
    assert (record.trainset_size, record.valset_hash, record.valset_size, record.seed) == (
        12,
        "b" * 64,
        5,
        7,
    )
    assert record.settings == {"max_bootstrapped_demos": 4}
    assert (record.score, record.result_version, record.finished_at) == (None, None, None)
    assert await store.get_optimization(record.id) == record


async def test_a_run_of_a_missing_program_version_is_refused(
    store: Store, program: ProgramRecord
) -> None:
    with pytest.raises(NotFoundError):
        await store.create_optimization(_new(program_version=2))
    with pytest.raises(NotFoundError):
        await store.create_optimization(_new(program="other"))


async def test_trials_come_back_in_number_order_with_their_details(
    store: Store, program: ProgramRecord
) -> None:
    record = await store.create_optimization(_new())
    await store.add_optimization_trials(
        record.id,
        [OptimizationTrial(2, 0.75, {"seed": 1}), OptimizationTrial(0, 0.5, {"kind": "baseline"})],
    )
    await store.add_optimization_trials(record.id, [OptimizationTrial(1, None, {})])
    trials = (await store.get_optimization(record.id)).trials
    assert [(t.number, t.score, t.detail) for t in trials] == [
        (0, 0.5, {"kind": "baseline"}),
        (1, None, {}),
        (2, 0.75, {"seed": 1}),
    ]


async def test_finishing_records_scores_version_and_stats_once(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    record = await store.create_optimization(_new())
    clock.advance(3)
    done = await store.finish_optimization(
        record.id,
        status=OptimizationStatus.COMPLETED,
        baseline_score=0.25,
        score=0.75,
        result_version=2,
        stats={"program_calls": 10, "usage": {"m": {"prompt_tokens": 3}}},
    )
    assert done.status is OptimizationStatus.COMPLETED
    assert (done.baseline_score, done.score, done.result_version) == (0.25, 0.75, 2)
    assert done.stats == {"program_calls": 10, "usage": {"m": {"prompt_tokens": 3}}}
    assert done.finished_at is not None
    assert timedelta(seconds=3) < done.finished_at - done.created_at < timedelta(seconds=4)
    assert (await store.get_optimization(record.id)).status is OptimizationStatus.COMPLETED
    with pytest.raises(StorageError):
        await store.finish_optimization(record.id, status=OptimizationStatus.FAILED)


async def test_a_failed_run_keeps_its_error(store: Store, program: ProgramRecord) -> None:
    record = await store.create_optimization(_new())
    failed = await store.finish_optimization(
        record.id, status=OptimizationStatus.FAILED, error="metric_invalid: no answer"
    )
    assert (failed.status, failed.error, failed.score) == (
        OptimizationStatus.FAILED,
        "metric_invalid: no answer",
        None,
    )


async def test_finishing_as_running_or_an_unknown_run_is_refused(
    store: Store, program: ProgramRecord
) -> None:
    record = await store.create_optimization(_new())
    with pytest.raises(ValidationError):
        await store.finish_optimization(record.id, status=OptimizationStatus.RUNNING)
    with pytest.raises(NotFoundError):
        await store.finish_optimization("missing", status=OptimizationStatus.FAILED)
    with pytest.raises(NotFoundError):
        await store.get_optimization("missing")
    with pytest.raises(NotFoundError):
        await store.add_optimization_trials("missing", [OptimizationTrial(0, 1.0)])


async def test_runs_are_listed_newest_first_per_program_with_a_limit(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    await store.put_program("other", {}, "o1")
    first = await store.create_optimization(_new())
    clock.advance(1)
    second = await store.create_optimization(_new(optimizer="gepa"))
    clock.advance(1)
    third = await store.create_optimization(_new(program="other"))
    assert [r.id for r in await store.list_optimizations()] == [third.id, second.id, first.id]
    assert [r.id for r in await store.list_optimizations(program="qa")] == [second.id, first.id]
    assert [r.id for r in await store.list_optimizations(limit=1)] == [third.id]
    with pytest.raises(ValidationError):
        await store.list_optimizations(limit=0)

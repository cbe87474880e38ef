"""The OptimizationStore contract: optimization runs and their trials (every implementation)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store._clock import FakeClock

from dspex.errors import LeaseLostError, NotFoundError, StorageError, ValidationError
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


async def test_a_leased_run_keeps_its_request_and_its_heartbeat_extends_the_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    request = {"trainset": [{"question": "q", "answer": "a"}], "max_demos": 2}
    record = await store.create_optimization(
        _new(worker_id="w1", lease_seconds=30, request=request)
    )
    assert (record.worker_id, record.attempts) == ("w1", 1)
    assert record.lease_token is not None
    assert record.lease_expires_at is not None
    assert await store.get_optimization_request(record.id) == request
    assert (
        await store.get_optimization_request((await store.create_optimization(_new())).id) is None
    )
    clock.advance(20)
    assert await store.heartbeat_optimization(record.id, record.lease_token, 30)
    renewed = await store.get_optimization(record.id)
    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at - record.lease_expires_at > timedelta(seconds=19)
    assert not await store.heartbeat_optimization(record.id, "another-token", 30)
    assert not await store.heartbeat_optimization("missing", record.lease_token, 30)
    with pytest.raises(NotFoundError):
        await store.get_optimization_request("missing")
    with pytest.raises(ValidationError):
        await store.create_optimization(_new(worker_id="w1", lease_seconds=0))


async def test_a_run_is_claimed_again_only_once_its_lease_expired_or_it_stopped(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    record = await store.create_optimization(_new(worker_id="w1", lease_seconds=30))
    assert record.lease_token is not None
    await store.add_optimization_trials(record.id, [OptimizationTrial(0, 0.5, {"kind": "x"})])
    assert await store.claim_optimization(record.id, worker_id="w2", lease_seconds=30) is None
    clock.advance(31)  # the process holding it stopped renewing its lease
    claimed = await store.claim_optimization(record.id, worker_id="w2", lease_seconds=30)
    assert claimed is not None
    assert (claimed.status, claimed.worker_id, claimed.attempts) == (
        OptimizationStatus.RUNNING,
        "w2",
        2,
    )
    assert claimed.lease_token not in (None, record.lease_token)
    assert [t.score for t in (await store.get_optimization(record.id)).trials] == [0.5]
    # the first process comes back: its lease is gone, it cannot write the outcome
    assert not await store.heartbeat_optimization(record.id, record.lease_token, 30)
    with pytest.raises(LeaseLostError):
        await store.finish_optimization(
            record.id, status=OptimizationStatus.FAILED, lease_token=record.lease_token
        )
    interrupted = await store.finish_optimization(
        record.id,
        status=OptimizationStatus.INTERRUPTED,
        error="cancelled",
        lease_token=claimed.lease_token,
    )
    assert (interrupted.lease_token, interrupted.lease_expires_at) == (None, None)
    again = await store.claim_optimization(record.id, worker_id="w3", lease_seconds=30)
    assert again is not None
    assert (again.attempts, again.error, again.finished_at) == (
        3,
        None,
        None,
    )
    await store.finish_optimization(record.id, status=OptimizationStatus.COMPLETED, score=1.0)
    assert await store.claim_optimization(record.id, worker_id="w4", lease_seconds=30) is None
    unleased = await store.create_optimization(_new())
    clock.advance(3600)
    assert await store.claim_optimization(unleased.id, worker_id="w4", lease_seconds=30) is None
    with pytest.raises(NotFoundError):
        await store.claim_optimization("missing", worker_id="w4", lease_seconds=30)

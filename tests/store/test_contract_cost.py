"""The store contract for cost (US dollars) and rate-limit waits: kept on executions, steps and
attempts, and added up on batches (every implementation)."""

from __future__ import annotations

import pytest

from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    BatchRecord,
    ExecutionStatus,
    FinishRequest,
    ProgramRecord,
    StepRecord,
    StepStatus,
)
from dspex.store import Store

COMPLETED = ExecutionStatus.COMPLETED
FAILED = ExecutionStatus.FAILED


@pytest.fixture
async def batch(store: Store, program: ProgramRecord) -> BatchRecord:
    return await store.create_batch("qa", 1, {}, total=3)


async def _claim(store: Store, batch: BatchRecord, indexes: list[int]) -> list[tuple[str, str]]:
    """Feed and claim items as a batch run does: ``(execution id, lease token)`` by index."""
    claimed = await store.add_and_claim_batch_items(
        batch.id, "qa", 1, [(i, {"i": i}) for i in indexes], worker_id="w", lease_seconds=30
    )
    return [claimed[i] for i in indexes]


def _step(cost: float) -> StepRecord:
    return StepRecord(module="answer", status=StepStatus.COMPLETED, cost_usd=cost)


def _attempt(cost: float) -> AttemptRecord:
    return AttemptRecord(
        module="answer",
        attempt=1,
        backend="default",
        outcome=AttemptOutcome.SUCCEEDED,
        prompt_tokens=10,
        completion_tokens=5,
        cost_usd=cost,
    )


async def test_a_new_batch_has_spent_nothing(store: Store, batch: BatchRecord) -> None:
    assert (batch.cost_usd, batch.rate_limited_s) == (0.0, 0.0)


async def test_finished_items_keep_their_cost_on_execution_step_and_attempt(
    store: Store, batch: BatchRecord
) -> None:
    claimed = await _claim(store, batch, [0, 1])
    (e0, t0), (e1, t1) = claimed[0], claimed[1]
    requests = [
        FinishRequest(
            e0, t0, COMPLETED, cost_usd=0.25, steps=(_step(0.25),), attempts=(_attempt(0.25),)
        ),
        FinishRequest(
            e1,
            t1,
            FAILED,
            cost_usd=0.5,
            rate_limited_ms=1500.0,
            steps=(_step(0.2), _step(0.3)),
            attempts=(_attempt(0.2), _attempt(0.3)),
        ),
    ]
    assert await store.finish_executions(requests) == [True, True]
    assert (await store.get_execution(e0)).cost_usd == pytest.approx(0.25)
    assert (await store.get_execution(e1)).cost_usd == pytest.approx(0.5)
    assert [s.cost_usd for s in await store.list_steps(e1)] == pytest.approx([0.2, 0.3])
    assert [a.cost_usd for a in await store.list_attempts(e0)] == pytest.approx([0.25])
    stored = await store.get_batch(batch.id)
    assert stored.cost_usd == pytest.approx(0.75)
    assert stored.rate_limited_s == pytest.approx(1.5)


async def test_a_batch_keeps_what_earlier_runs_of_a_re_run_item_spent(
    store: Store, batch: BatchRecord
) -> None:
    eid, token = (await _claim(store, batch, [0]))[0]
    await store.finish_executions([FinishRequest(eid, token, FAILED, cost_usd=0.1)])
    again = await _claim(store, batch, [0])  # a resumed run feeds the same item again
    eid, token = again[0]
    await store.finish_executions([FinishRequest(eid, token, COMPLETED, cost_usd=0.2)])
    assert (await store.get_execution(eid)).cost_usd == pytest.approx(0.2)
    assert (await store.get_batch(batch.id)).cost_usd == pytest.approx(0.3)


async def test_a_refused_finish_adds_nothing_to_its_batch(store: Store, batch: BatchRecord) -> None:
    eid, _ = (await _claim(store, batch, [0]))[0]
    refused = FinishRequest(eid, "not-the-token", COMPLETED, cost_usd=9.0, rate_limited_ms=9.0)
    assert await store.finish_executions([refused]) == [False]
    stored = await store.get_batch(batch.id)
    assert (stored.cost_usd, stored.rate_limited_s) == (0.0, 0.0)


async def test_one_finished_execution_keeps_its_cost(store: Store, program: ProgramRecord) -> None:
    execution = await store.start_execution("qa", 1, {"q": "x"}, worker_id="w", lease_seconds=30)
    token = execution.lease_token
    assert token is not None
    finished = await store.finish_execution(
        execution.id,
        token,
        COMPLETED,
        cost_usd=0.125,
        steps=[_step(0.125)],
        attempts=[_attempt(0.125)],
    )
    assert finished.cost_usd == pytest.approx(0.125)
    assert (await store.get_execution(execution.id)).cost_usd == pytest.approx(0.125)
    assert [s.cost_usd for s in await store.list_steps(execution.id)] == pytest.approx([0.125])
    assert [a.cost_usd for a in await store.list_attempts(execution.id)] == pytest.approx([0.125])

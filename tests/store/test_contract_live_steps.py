"""The ExecutionStore contract for the steps of a running execution recorded before it finishes
(``record_steps``), so that any process can follow it (every store)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from tests.store._clock import FakeClock

from dspex.errors import LeaseLostError, NotFoundError
from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    ExecutionStatus,
    ProgramRecord,
    StepRecord,
    StepStatus,
)
from dspex.store import Store


async def _running(store: Store) -> tuple[str, str]:
    started = await store.start_execution(
        "qa", 1, {"question": "why?"}, worker_id="worker-1", lease_seconds=30.0
    )
    assert started.lease_token is not None
    return started.id, started.lease_token


def _steps(clock: FakeClock, *modules: str) -> list[StepRecord]:
    start = clock()
    return [
        StepRecord(
            module=module,
            status=StepStatus.COMPLETED,
            started_at=start + timedelta(milliseconds=100 * i),
            ended_at=start + timedelta(milliseconds=100 * i + 90),
            duration_ms=90.0,
            outputs={"step": i},
        )
        for i, module in enumerate(modules)
    ]


def _attempt(module: str, number: int = 1) -> AttemptRecord:
    return AttemptRecord(
        module=module, attempt=number, backend="primary", outcome=AttemptOutcome.SUCCEEDED
    )


async def test_steps_recorded_while_running_are_read_back_at_once(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = _steps(clock, "retrieve", "answer")
    recorded = await store.record_steps(execution_id, token, steps[:1], [_attempt("retrieve")])
    assert (recorded.status, recorded.lease_token) == (ExecutionStatus.RUNNING, token)
    assert (recorded.live_steps, recorded.live_attempts) == (1, 1)
    stored = await store.list_steps(execution_id)
    assert [(s.module, s.outputs, s.execution_id) for s in stored] == [
        ("retrieve", {"step": 0}, execution_id)
    ]
    assert [a.module for a in await store.list_attempts(execution_id)] == ["retrieve"]
    assert (await store.get_execution(execution_id)).live_steps == 1


async def test_recording_the_same_steps_again_writes_nothing_more(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = _steps(clock, "retrieve", "rank", "answer")
    attempts = [_attempt("retrieve"), _attempt("rank", 1), _attempt("rank", 2)]
    await store.record_steps(execution_id, token, steps[:1], attempts[:1])
    await store.record_steps(execution_id, token, steps[:1], attempts[:1])
    # every call gives the run's steps from its first: only the new ones are written
    again = await store.record_steps(execution_id, token, steps[:2], attempts)
    assert (again.live_steps, again.live_attempts) == (2, 3)
    await store.record_steps(execution_id, token, steps[:2], attempts)
    assert [s.module for s in await store.list_steps(execution_id)] == ["retrieve", "rank"]
    got = await store.list_attempts(execution_id)
    assert [(a.module, a.attempt) for a in got] == [("retrieve", 1), ("rank", 1), ("rank", 2)]


async def test_finish_writes_only_the_steps_not_recorded_yet_in_run_order(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = _steps(clock, "retrieve", "rank", "answer")
    attempts = [_attempt("retrieve"), _attempt("rank"), _attempt("answer")]
    await store.record_steps(execution_id, token, steps[:2], attempts[:2])
    done = await store.finish_execution(
        execution_id, token, ExecutionStatus.COMPLETED, steps=steps, attempts=attempts
    )
    assert done.status is ExecutionStatus.COMPLETED
    stored = await store.list_steps(execution_id)
    assert [(s.module, s.outputs) for s in stored] == [
        ("retrieve", {"step": 0}),
        ("rank", {"step": 1}),
        ("answer", {"step": 2}),
    ]
    ids = [s.id for s in stored]
    assert ids == sorted(ids)
    got = await store.list_attempts(execution_id)
    assert [a.module for a in got] == ["retrieve", "rank", "answer"]
    assert (await store.get_program("qa")).execution_count == 1
    history = await store.list_steps_for_program("qa")
    assert sorted(s.module for s in history) == ["answer", "rank", "retrieve"]


async def test_finish_after_every_step_was_recorded_writes_no_step_again(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = _steps(clock, "retrieve", "answer")
    attempts = [_attempt("retrieve"), _attempt("answer")]
    await store.record_steps(execution_id, token, steps, attempts)
    await store.finish_execution(
        execution_id, token, ExecutionStatus.FAILED, steps=steps, attempts=attempts
    )
    assert [s.module for s in await store.list_steps(execution_id)] == ["retrieve", "answer"]
    assert len(await store.list_attempts(execution_id)) == 2


async def test_an_execution_without_recorded_steps_finishes_as_before(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = _steps(clock, "answer")
    done = await store.finish_execution(
        execution_id, token, ExecutionStatus.COMPLETED, steps=steps, attempts=[_attempt("answer")]
    )
    assert (done.live_steps, done.live_attempts) == (0, 0)
    assert [s.module for s in await store.list_steps(execution_id)] == ["answer"]
    assert len(await store.list_attempts(execution_id)) == 1


async def test_recording_steps_needs_the_lease(
    store: Store, program: ProgramRecord, clock: FakeClock
) -> None:
    execution_id, token = await _running(store)
    steps = _steps(clock, "retrieve")
    with pytest.raises(LeaseLostError):
        await store.record_steps(execution_id, "not-the-token", steps)
    with pytest.raises(NotFoundError):
        await store.record_steps("no-such-execution", token, steps)
    assert await store.list_steps(execution_id) == []
    await store.finish_execution(execution_id, token, ExecutionStatus.CANCELLED)
    with pytest.raises(LeaseLostError):  # finished: nobody holds it any more
        await store.record_steps(execution_id, token, steps)
    assert await store.list_steps(execution_id) == []
    assert (await store.get_execution(execution_id)).live_steps == 0

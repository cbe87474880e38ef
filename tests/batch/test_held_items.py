"""Items held under another worker's lease: a run waits for them, never runs them twice, and a
batch is never called completed while one is not terminal."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from tests.batch._support import HELD, Scripted, hold, questions
from tests.store._clock import FakeClock
from tests.support.store_reads import batch_executions

from dspex import ProgressEvent
from dspex.backends.base import PredictRequest
from dspex.records import ExecutionStatus
from dspex.runtime import Runtime

pytestmark = pytest.mark.looptime


async def test_a_run_claims_and_runs_held_items_once_their_lease_expires(
    rt: Runtime, handler: Scripted, clock: FakeClock
) -> None:
    batch_id, _ = await hold(rt, 5)

    def progress(event: ProgressEvent) -> None:
        if event.index is None and event.held:
            clock.advance(31.0)  # the holder died: its lease runs out

    result = await rt.run_batch("qa", questions(5), resume=batch_id, on_progress=progress)

    assert result.status == "completed"
    assert sorted(handler.calls) == [f"q{i}" for i in range(5)]
    assert all(n == 1 for n in handler.calls.values())
    rows = await batch_executions(rt.store, batch_id)
    assert [(r.batch_index, r.status, r.attempts) for r in rows] == [
        (i, ExecutionStatus.COMPLETED, 2 if i in HELD else 1) for i in range(5)
    ]


async def test_waiting_is_reported_with_the_held_count_and_lease_time_left(
    rt: Runtime, clock: FakeClock
) -> None:
    batch_id, _ = await hold(rt, 5)
    events: list[ProgressEvent] = []

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.index is None and event.held:
            clock.advance(10.0)

    await rt.run_batch("qa", questions(5), resume=batch_id, on_progress=progress)

    waiting = [(e.held, e.held_expires_s) for e in events if e.index is None]
    assert waiting[0][0] == 2
    assert waiting[0][1] == pytest.approx(30.0, abs=0.01)
    assert waiting[1] == (2, pytest.approx(20.0, abs=0.01))
    assert waiting[-1] == (0, None)  # the wait is over
    assert events[-1].held == 0


async def test_waiting_polls_no_more_often_than_a_quarter_of_the_lease(
    rt: Runtime, clock: FakeClock
) -> None:
    batch_id, _ = await hold(rt, 5)
    loop = asyncio.get_running_loop()
    at: list[float] = []

    def progress(event: ProgressEvent) -> None:
        if event.index is None and event.held:
            at.append(loop.time())
            if len(at) == 3:
                clock.advance(31.0)

    await rt.run_batch("qa", questions(5), resume=batch_id, on_progress=progress)

    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert gaps == [pytest.approx(1.0, abs=0.05)] * 2


async def test_the_deadline_ends_a_wait_for_items_a_worker_keeps_holding(rt: Runtime) -> None:
    batch_id, _ = await hold(rt, 5)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    result = await rt.run_batch("qa", questions(5), resume=batch_id, deadline=5.0)

    assert loop.time() - t0 == pytest.approx(5.0, abs=0.1)
    assert (result.status, result.stop_reason) == ("cancelled", "deadline")
    assert result.stats.completed == 3
    states = await rt.store.batch_item_states(batch_id)
    assert states == {"completed": 3, "running": 2}  # still the other worker's


async def test_cancelling_a_run_ends_its_wait_and_leaves_the_batch_cancelled(rt: Runtime) -> None:
    batch_id, _ = await hold(rt, 5)
    task = asyncio.create_task(rt.run_batch("qa", questions(5), resume=batch_id))
    await asyncio.sleep(10.0)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    batch = await rt.store.get_batch(batch_id)
    assert (batch.status.value, batch.completed) == ("cancelled", 3)


class _Thief(Scripted):
    """Lets another worker take over the item ``q2`` while it runs here (its lease ran out)."""

    def __init__(self) -> None:
        super().__init__(latency=0.0)
        self.take: Any = None

    async def __call__(self, request: PredictRequest) -> dict[str, Any]:
        if request.inputs["question"] == "q2" and self.take is not None:
            await self.take()
        return await super().__call__(request)


@pytest.fixture
def handler() -> Scripted:
    return _Thief()


async def test_a_batch_with_an_item_taken_over_elsewhere_is_not_called_completed(
    rt: Runtime, handler: _Thief, clock: FakeClock
) -> None:
    batch = await rt.store.create_batch("qa", 1, {}, 4)

    async def take() -> None:
        clock.advance(60.0)
        taken = await rt.store.claim_batch_items(batch.id, [2], worker_id="other", lease_seconds=30)
        assert list(taken) == [2]

    handler.take = take

    result = await rt.run_batch("qa", questions(4), resume=batch.id)

    assert (result.status, result.stop_reason) == ("cancelled", "incomplete")
    assert result.stats.completed == 3
    assert (await rt.store.get_batch(batch.id)).status.value == "cancelled"


async def test_a_stop_never_cuts_a_store_read_of_the_wait_in_half(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelling a database call half way can leave its connection waiting forever (SQLAlchemy's
    # asyncio drivers): the deadline stops the wait, and the read in flight ends on its own.
    batch_id, _ = await hold(rt, 5)
    store = rt.store
    real = store.list_executions
    reads = {"cut": 0, "done": 0}

    async def slow(*args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.sleep(3.0)
        except asyncio.CancelledError:
            reads["cut"] += 1
            raise
        reads["done"] += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "list_executions", slow)
    result = await rt.run_batch("qa", questions(5), resume=batch_id, deadline=5.0)
    assert result.stop_reason == "deadline"
    await asyncio.sleep(5.0)
    assert reads["cut"] == 0
    assert reads["done"] >= 2  # the one the deadline fell in finished too

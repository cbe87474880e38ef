"""Waiting for items another live worker holds, on every store (real time: short leases)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.batch._support import HELD, Scripted, finished_by_other, hold, questions
from tests.runtime._support import make_runtime, ready
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind
from tests.support.store_reads import batch_executions

from dspex import ProgressEvent
from dspex.backends.mock import MockBackend
from dspex.records import ExecutionStatus
from dspex.runtime import Runtime


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def rt(
    request: pytest.FixtureRequest, clock: FakeClock, handler: Scripted
) -> AsyncIterator[Runtime]:
    """A runtime whose leases last 0.2 s, so that a wait polls every 50 ms of real time.

    The store's clock is fake and never advanced: the other worker's lease never expires.
    """
    handler.latency = 0.0
    async with (
        open_kind(request.param, request, clock) as store,
        make_runtime(
            store, {"default": MockBackend("default", handler=handler)}, lease_seconds=0.2
        ) as runtime,
    ):
        await ready(runtime)
        yield runtime


async def test_a_run_waits_for_items_a_live_worker_holds_and_never_runs_them(
    rt: Runtime, handler: Scripted
) -> None:
    batch_id, held = await hold(rt, 6)
    waits: list[ProgressEvent] = []

    async def progress(event: ProgressEvent) -> None:
        if event.index is None and event.held:
            waits.append(event)
            if len(waits) == 2:  # the other worker finishes while the run waits
                written = await rt.store.finish_executions(finished_by_other(held))
                assert written == [True, True]

    result = await rt.run_batch("qa", questions(6), resume=batch_id, on_progress=progress)

    assert len(waits) == 2
    assert sorted(handler.calls) == ["q0", "q2", "q3", "q5"]
    assert result.status == "completed"
    assert result.results is not None
    assert [r.outputs for r in result.results if r.index in HELD] == [
        {"answer": "the other worker answered q1"},
        {"answer": "the other worker answered q4"},
    ]
    rows = await batch_executions(rt.store, batch_id)
    assert [(r.batch_index, r.status, r.attempts) for r in rows] == [
        (i, ExecutionStatus.COMPLETED, 1) for i in range(6)
    ]

"""A long execution of several modules records the steps it finished while it runs, so any
process sharing the store can follow it; a short one writes exactly what it wrote before."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.runtime._support import QA, make_runtime, ready, slow
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import LeaseLostError, StorageError
from dspex.records import ExecutionFilter, ExecutionStatus, StepRecord
from dspex.store import MemoryStore, Store

# draft, then polish on a backend the test holds until it has seen draft recorded
CHAIN: dict[str, Any] = {
    "name": "chain",
    "signature": "question: str -> answer: str",
    "modules": {
        "draft": {"kind": "predict", "signature": "question: str -> draft: str"},
        "polish": {
            "kind": "predict",
            "signature": "draft: str -> answer: str",
            "inputs": {"draft": "draft.draft"},
            "backend": "gate",
        },
    },
}


def four(ms: float) -> dict[str, Any]:
    """Four modules one after another, each taking ``ms``."""
    return {
        "name": "four",
        "signature": "q: str -> d1: str",
        "modules": {
            "a": slow("q: str -> a1: str", ms),
            "b": slow("a1: str -> b1: str", ms, inputs={"a1": "a.a1"}),
            "c": slow("b1: str -> c1: str", ms, inputs={"b1": "b.b1"}),
            "d": slow("c1: str -> d1: str", ms, inputs={"c1": "c.c1"}),
        },
    }


class Counted:
    """Counts a store's calls of some methods (and keeps their step lists)."""

    def __init__(self, store: Store, *names: str) -> None:
        self.calls: dict[str, list[list[str]]] = {name: [] for name in names}
        for name in names:
            setattr(store, name, self._wrap(name, getattr(store, name)))

    def _wrap(self, name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            steps = kwargs.get("steps", args[2] if name == "record_steps" else ())
            self.calls[name].append([s.module for s in steps])
            return await method(*args, **kwargs)

        return counted


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    async with open_kind(request.param, request, FakeClock()) as store:
        yield store


async def _running_id(store: Store) -> str:
    page = await store.list_executions(ExecutionFilter(statuses=[ExecutionStatus.RUNNING]))
    assert len(page.items) == 1
    return page.items[0].id


async def _until_recorded(store: Store, execution_id: str) -> list[StepRecord]:
    for _ in range(2000):
        steps = await store.list_steps(execution_id)
        if steps:
            return steps
        await asyncio.sleep(0.005)
    raise AssertionError("no step was recorded while the execution ran")


async def test_a_long_run_records_each_finished_step_before_it_ends(any_store: Store) -> None:
    gate = asyncio.Event()

    async def held(request: PredictRequest) -> dict[str, Any]:
        await gate.wait()
        return {"answer": f"polished {request.inputs['draft']}"}

    backends = {"default": MockBackend("default"), "gate": MockBackend("gate", handler=held)}
    counted = Counted(any_store, "record_steps", "finish_execution")
    async with make_runtime(any_store, backends, live_steps_seconds=0) as rt:
        await ready(rt, CHAIN)
        run = asyncio.create_task(rt.execute("chain", {"question": "why?"}))
        execution_id = None
        while execution_id is None:  # started once the store lists it
            await asyncio.sleep(0.005)
            page = await any_store.list_executions(ExecutionFilter(program="chain"))
            execution_id = page.items[0].id if page.items else None
        seen = await _until_recorded(any_store, execution_id)
        assert [(s.module, s.status) for s in seen] == [("draft", "completed")]
        draft = seen[0].outputs
        assert draft is not None  # as the finish would have recorded it
        running = await any_store.get_execution(execution_id)
        assert (running.status, running.live_steps, running.live_attempts) == ("running", 1, 1)
        assert [a.module for a in await any_store.list_attempts(execution_id)] == ["draft"]
        assert not run.done()
        gate.set()
        result = await run
        steps = await any_store.list_steps(execution_id)
        attempts = await any_store.list_attempts(execution_id)
    assert result.status == "completed"
    assert result.outputs == {"answer": f"polished {draft['draft']}"}
    assert [s.module for s in steps] == ["draft", "polish"]  # each once, in run order
    assert steps[0].id == seen[0].id
    assert [a.module for a in attempts] == ["draft", "polish"]
    assert counted.calls["record_steps"] == [["draft"]]
    assert counted.calls["finish_execution"] == [["draft", "polish"]]
    assert [s.module for s in result.steps] == ["draft", "polish"]


async def test_a_run_shorter_than_the_interval_writes_its_steps_only_when_it_finishes(
    any_store: Store,
) -> None:
    counted = Counted(any_store, "record_steps", "finish_execution")
    # an interval no test run reaches: only the finish writes
    async with make_runtime(any_store, live_steps_seconds=3600) as rt:
        await ready(rt, four(0))
        result = await rt.execute("four", {"q": "?"})
        await ready(rt, QA)
        one = await rt.execute("qa", {"question": "?"})
        steps = await any_store.list_steps(result.execution_id)
    assert (result.status, one.status) == ("completed", "completed")
    assert counted.calls["record_steps"] == []
    assert counted.calls["finish_execution"] == [["a", "b", "c", "d"], ["answer"]]
    assert [s.module for s in steps] == ["a", "b", "c", "d"]


async def test_a_one_module_program_never_records_early_whatever_the_interval() -> None:
    store = MemoryStore()
    counted = Counted(store, "record_steps", "finish_execution")
    backends = {"default": MockBackend("default", latency_ms=50)}
    async with make_runtime(store, backends, live_steps_seconds=0) as rt:
        await ready(rt, QA)
        result = await rt.execute("qa", {"question": "?"})
    assert result.status == "completed"
    assert counted.calls == {"record_steps": [], "finish_execution": [["answer"]]}


EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.looptime
async def test_steps_are_recorded_at_most_once_per_interval_and_only_when_new() -> None:
    loop = asyncio.get_running_loop()
    store = MemoryStore(clock=lambda: EPOCH + timedelta(seconds=loop.time()))
    counted = Counted(store, "record_steps", "finish_execution")
    async with make_runtime(store, live_steps_seconds=0.5) as rt:
        await ready(rt, four(300))
        result = await rt.execute("four", {"q": "?"})
        steps = await store.list_steps(result.execution_id)
        attempts = await store.list_attempts(result.execution_id)
        record = await store.get_execution(result.execution_id)
    assert result.status == "completed"
    # a ends at 0.3 s: recorded at 0.5 s; b and c end at 0.6 and 0.9 s: recorded together at
    # 1.0 s; d ends the run at 1.2 s, before the next record was due: the finish writes it
    assert counted.calls["record_steps"] == [["a"], ["a", "b", "c"]]
    assert counted.calls["finish_execution"] == [["a", "b", "c", "d"]]
    assert [s.module for s in steps] == ["a", "b", "c", "d"]
    assert len(attempts) == 4
    assert (record.live_steps, record.live_attempts) == (3, 3)


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("error", "records"),
    [
        # tried again once another step ended, when the interval allows
        (StorageError("database error: connection lost"), [["a"], ["a", "b", "c"]]),
        # another worker holds it: nothing more is recorded early
        (LeaseLostError("execution is no longer held by this lease"), [["a"]]),
    ],
)
async def test_a_failed_record_leaves_every_step_to_a_later_record_or_the_finish(
    error: Exception, records: list[list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    store = MemoryStore(clock=lambda: EPOCH + timedelta(seconds=loop.time()))
    counted = Counted(store, "record_steps")
    record_steps = store.record_steps
    failures = [error]

    async def first_fails(*args: Any, **kwargs: Any) -> Any:
        if failures:
            counted.calls["record_steps"].append([s.module for s in args[2]])
            raise failures.pop()
        return await record_steps(*args, **kwargs)

    store.record_steps = first_fails  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="dspex.execution"):
        async with make_runtime(store, live_steps_seconds=0.5) as rt:
            await ready(rt, four(300))
            result = await rt.execute("four", {"q": "?"})
            steps = await store.list_steps(result.execution_id)
    assert result.status == "completed"
    assert counted.calls["record_steps"] == records
    assert [s.module for s in steps] == ["a", "b", "c", "d"]  # each once
    logged = "recording the steps of execution" in caplog.text
    assert logged is not isinstance(error, LeaseLostError)  # a lost lease is no failure

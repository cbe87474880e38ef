"""An execution's record is written while its run begins, and nothing of the run outlives a
record the store refuses; ``Runtime.start_execution`` returns once the record is there.

The run does not wait for the database before its first module starts (that wait was one
store round trip on every execution), but its result is neither returned nor written before its
record is; a record the store refuses stops the run, and execute raises why. Whoever is given
the id while the run goes on (``start_execution``, a stream) gets it once the record is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from tests.runtime._support import QA, make_runtime, ready
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex import ExecutionHandle
from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import NotFoundError, ProgramStateError, StorageError, ValidationError
from dspex.records import ExecutionRecord
from dspex.runtime import Runtime
from dspex.store import MemoryStore

STORES = ["memory", "sqlite", POSTGRES]


class HeldStart(MemoryStore):
    """A memory store whose ``start_execution`` waits for ``release`` and then writes the
    record, or (``refuse`` set) fails as a database would."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.refuse: Exception | None = None

    async def start_execution(self, *args: Any, **kwargs: Any) -> ExecutionRecord:
        await self.release.wait()
        if self.refuse is not None:
            raise self.refuse
        return await super().start_execution(*args, **kwargs)


class Module:
    """A backend handler that tells when it started and may wait for ``go``."""

    def __init__(self, *, wait: bool = False) -> None:
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.wait = wait
        self.cancelled = False

    async def __call__(self, request: PredictRequest) -> dict[str, Any]:
        self.started.set()
        if self.wait:
            try:
                await self.go.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        return {"answer": "42"}


@asynccontextmanager
async def held_runtime(module: Module) -> AsyncIterator[tuple[HeldStart, Runtime]]:
    """A runtime over a :class:`HeldStart` store whose backend is ``module``, the program ready
    and the next record held back."""
    store = HeldStart()
    async with make_runtime(store, {"default": MockBackend("default", handler=module)}) as rt:
        store.release.set()
        await ready(rt)
        store.release.clear()
        yield store, rt


async def test_the_first_module_starts_before_the_record_is_written() -> None:
    module = Module()
    async with held_runtime(module) as (store, rt):
        run = asyncio.ensure_future(rt.execute("qa", {"question": "why?"}))
        # the record is held back, yet the module runs; awaiting the run before the release
        # would wait forever
        await asyncio.wait_for(module.started.wait(), 5.0)
        await asyncio.sleep(0.05)
        assert not run.done()  # its result waits for the record
        assert (await store.list_executions()).items == []
        store.release.set()
        result = await asyncio.wait_for(run, 5.0)
        assert result.status == "completed"
        detail = await rt.get_execution(result.execution_id)
        assert (detail.status, detail.outputs) == ("completed", {"answer": "42"})


@pytest.mark.parametrize("module_ends_first", [False, True], ids=["running", "ended"])
async def test_a_refused_record_stops_the_run_and_nothing_is_recorded(
    module_ends_first: bool,
) -> None:
    module = Module(wait=not module_ends_first)
    async with held_runtime(module) as (store, rt):
        run = asyncio.ensure_future(rt.execute("qa", {"question": "why?"}))
        await asyncio.wait_for(module.started.wait(), 5.0)
        await asyncio.sleep(0.01)
        store.refuse = StorageError("database error: disk I/O error")
        store.release.set()
        with pytest.raises(StorageError, match="disk I/O"):
            await asyncio.wait_for(run, 5.0)
        assert module.cancelled is (not module_ends_first)
        assert (await store.list_executions()).items == []
        program = await rt.get_program("qa")
        assert (program.success_count, program.failure_count) == (0, 0)


@pytest.mark.parametrize("kind", STORES)
async def test_a_run_refused_for_a_program_archived_meanwhile_is_stopped(
    kind: str, request: pytest.FixtureRequest
) -> None:
    module = Module(wait=True)
    backends = {"default": MockBackend("default", handler=module)}
    async with (
        open_kind(kind, request, FakeClock()) as store,
        make_runtime(store, backends) as rt,
    ):
        await ready(rt)
        module.go.set()
        await rt.execute("qa", {"question": "first"})  # the ready record is now cached
        await rt.archive("qa")
        module.go.clear()
        with pytest.raises(ProgramStateError, match="archived"):
            await asyncio.wait_for(rt.execute("qa", {"question": "second"}), 10.0)
        assert module.cancelled
        assert len((await rt.list_executions()).items) == 1


@pytest.fixture(params=STORES)
async def slow_rt(request: pytest.FixtureRequest) -> AsyncIterator[Runtime]:
    """A started runtime whose default backend answers in 300 ms, on every store."""
    backends = {"default": MockBackend("default", latency_ms=300)}
    async with (
        open_kind(request.param, request, FakeClock()) as store,
        make_runtime(store, backends) as rt,
    ):
        await ready(rt)
        yield rt


async def test_start_execution_returns_once_the_record_is_there(slow_rt: Runtime) -> None:
    handle = await slow_rt.start_execution("qa", {"question": "why?"})
    assert isinstance(handle, ExecutionHandle)
    assert handle.program == "qa"
    detail = await slow_rt.get_execution(handle.execution_id)
    assert detail.status == "running"
    assert detail.inputs == {"question": "why?"}
    result = await handle.task
    assert (result.execution_id, result.status) == (handle.execution_id, "completed")
    assert (await slow_rt.get_execution(handle.execution_id)).status == "completed"


async def test_a_started_execution_cancelled_is_recorded_cancelled(slow_rt: Runtime) -> None:
    handle = await slow_rt.start_execution("qa", {"question": "why?"})
    handle.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await handle.task
    detail = await slow_rt.get_execution(handle.execution_id)
    assert (detail.status, detail.error and detail.error.code) == ("cancelled", "cancelled")


async def test_start_execution_raises_what_execute_refuses_and_records_nothing(
    slow_rt: Runtime,
) -> None:
    with pytest.raises(NotFoundError):
        await slow_rt.start_execution("nope", {"question": "why?"})
    with pytest.raises(ValidationError) as caught:
        await slow_rt.start_execution("qa", {"question": 3})
    assert caught.value.errors[0].field == "question"
    await slow_rt.register({**QA, "description": "v2"})
    with pytest.raises(ProgramStateError, match="v2 is draft"):
        await slow_rt.start_execution("qa", {"question": "why?"})
    assert (await slow_rt.list_executions()).items == []


async def test_a_stream_names_an_execution_already_recorded() -> None:
    module = Module()
    async with held_runtime(module) as (store, rt):
        events = rt.stream("qa", {"question": "why?"})
        first = asyncio.ensure_future(anext(aiter(events)))
        await asyncio.sleep(0.05)
        # with a stream (as with start_execution) the run waits for its record
        assert not module.started.is_set()
        assert not first.done()
        store.release.set()
        started = await asyncio.wait_for(first, 5.0)
        assert (await rt.get_execution(started.execution_id)).status in ("running", "completed")
        async for _ in events:
            pass
        assert module.started.is_set()

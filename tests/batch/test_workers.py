"""Several worker processes on one SQLite database (real processes forked by the worker server)."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
from pathlib import Path

import pytest
from tests.batch._support import SpanLog, peak_overlap
from tests.runtime._support import QA, make_runtime, ready
from tests.support.store_reads import batch_executions

from dspex.backends.mock import MockBackend
from dspex.batch._server import running_server
from dspex.batch._wire import recv, send
from dspex.batch._worker import _items, _Link
from dspex.batch.options import BatchOptions
from dspex.batch.runner import RunnerOptions
from dspex.batch.workers import _Pool, concurrency_shares
from dspex.config import DefaultsSettings
from dspex.errors import BatchError, ConfigError, RateLimitError
from dspex.records import BatchStatus
from dspex.resilience.policy import RetryPolicy
from dspex.store import MemoryStore, SqlStore

pytestmark = pytest.mark.slow


async def test_two_worker_processes_run_every_item_once_in_order(tmp_path: object) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        items = [{"question": f"q{i}"} for i in range(500)]
        result = await rt.run_batch("qa", items, workers=2)
        assert result.stats.completed == 500
        assert result.stats.ran == 500
        assert result.results is not None
        assert [r.index for r in result.results] == list(range(500))
        # chunks go to whichever worker is free first: any split is right, none is lost
        workers = {r.worker_id for r in await batch_executions(store, result.batch_id)}
        shares = {w.rsplit("/", 1)[-1].split("@")[0] for w in workers if w}
        assert shares <= {"0", "1"}


async def test_the_concurrency_limit_is_the_batchs_not_each_workers(tmp_path: object) -> None:
    log = f"{tmp_path}/spans.log"
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    backend = MockBackend("default", handler=SpanLog(log, latency=0.005))
    async with store, make_runtime(store, {"default": backend}) as rt:
        await ready(rt)
        items = [{"question": f"q{i}"} for i in range(1000)]  # five chunks of 200
        result = await rt.run_batch("qa", items, workers=2, max_concurrency=6)
        assert result.stats.completed == 1000
    peak = peak_overlap(log)
    assert 3 < peak <= 6  # both processes ran at once, within the batch's limit together


def test_concurrency_is_shared_out_between_worker_processes() -> None:
    assert concurrency_shares(256, 2) == [128, 128]
    assert concurrency_shares(8, 3) == [3, 3, 2]
    assert concurrency_shares(2, 4) == [1, 1]  # more processes than items at once would idle
    assert concurrency_shares(1, 1) == [1]


async def test_workers_need_a_store_other_processes_can_open() -> None:
    async with MemoryStore() as store, make_runtime(store) as rt:
        await ready(rt)
        with pytest.raises(ConfigError, match="workers > 1"):
            await rt.run_batch("qa", [{"question": "q"}], workers=2)


async def test_started_workers_serve_the_next_batches(tmp_path: object) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        await rt.start_workers()
        server = running_server()
        assert server is not None
        await rt.start_workers()  # again: the same server, nothing new
        assert running_server() is server
        for size in (7, 30):
            result = await rt.run_batch(
                "qa", [{"question": f"q{i}"} for i in range(size)], workers=2
            )
            assert result.stats.completed == size
        assert running_server() is server  # every batch reused it
        assert server.alive()


async def test_worker_results_sent_back_match_what_the_store_holds(tmp_path: object) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        items = [{"question": f"q{i}"} for i in range(300)]
        result = await rt.run_batch("qa", items, workers=2)
        assert result.results is not None
        stored = [item async for item in rt.batch_results(result.batch_id)]
        assert [r.model_dump() for r in result.results] == [s.model_dump() for s in stored]


class RefusesOtherProcesses(MockBackend):
    """A backend that can be sent to a worker process but not unpacked there."""

    def __setstate__(self, state: dict[str, object]) -> None:
        raise RuntimeError("this backend works in the process that made it only")


async def test_a_failing_worker_ends_the_batch_with_an_error_naming_it_and_how_to_resume(
    tmp_path: object,
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": RefusesOtherProcesses("default")}) as rt:
        await ready(rt)
        with pytest.raises(BatchError) as caught:
            await rt.run_batch("qa", [{"question": f"q{i}"} for i in range(20)], workers=2)
        (batch,) = await store.list_batches()
    assert caught.value.batch_id == batch.id
    assert "only" in caught.value.message
    assert f"--resume {batch.id}" in caught.value.message
    assert batch.status is BatchStatus.FAILED
    assert (await store.open_executions()).running == 0


async def test_backends_that_cannot_reach_a_worker_process_are_a_configuration_error(
    tmp_path: object,
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    unpicklable = MockBackend("default", handler=lambda request: {"answer": "a"})
    async with store, make_runtime(store, {"default": unpicklable}) as rt:
        await ready(rt)
        with pytest.raises(ConfigError, match="cannot be pickled"):
            await rt.run_batch("qa", [{"question": "q"}], workers=2)


async def test_a_worker_waiting_for_its_hosts_answer_keeps_its_event_loop_running(
    tmp_path: Path,
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(5)))
    host, worker = socket.socketpair()
    host.settimeout(10.0)  # a test that fails must not wait forever
    link = _Link(worker)
    stopped: list[bool] = []
    link.attach(asyncio.get_running_loop(), lambda: stopped.append(True))
    try:
        items = _items(path, 2, link)  # chunks [0, 1], [2, 3], [4]
        first = asyncio.ensure_future(anext(items))
        for _ in range(10):  # the host is silent: everything else on the loop still runs
            await asyncio.sleep(0)
        assert not first.done()
        assert recv(host) == (("take",), [])
        send(host, ("chunk", 1))
        assert (await first).index == 2
        assert (await anext(items)).index == 3  # the rest of its chunk: nothing to ask
        rest = asyncio.ensure_future(anext(items))
        assert await asyncio.to_thread(recv, host) == (("take",), [])
        host.close()  # the host is gone: the worker stops and reads no other chunk
        with pytest.raises(StopAsyncIteration):
            await rest
        assert stopped == [True]
    finally:
        link.detach(asyncio.get_running_loop())
        worker.close()
        host.close()


class RateLimitedForAnHour:
    """Every call is rate limited, the provider asking for an hour's wait (picklable: it goes
    to the worker processes)."""

    def __call__(self, request: object) -> dict[str, str]:
        raise RateLimitError("slow down", retry_after=3600.0)


ONE_ATTEMPT_QA = {
    **QA,
    "modules": {"answer": {**QA["modules"]["answer"], "retry": {"max_attempts": 1}}},
}


async def test_worker_processes_rerun_items_as_the_batchs_options_say(tmp_path: object) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    backend = MockBackend("default", handler=RateLimitedForAnHour())
    options = BatchOptions(
        workers=2,
        max_retries=2,
        chunk_size=3,
        retry=RetryPolicy(initial_interval=0.0, jitter=0.0, max_retry_after=0.0),
    )
    # 24 rate-limited calls would open the backend's breaker: this test counts item reruns
    no_breakers = DefaultsSettings(breakers=False)
    async with store, make_runtime(store, {"default": backend}, defaults=no_breakers) as rt:
        await ready(rt, ONE_ATTEMPT_QA)
        items = [{"question": f"q{i}"} for i in range(8)]
        result = await rt.run_batch("qa", items, options=options)
        batch = await rt.get_batch(result.batch_id)
        executions = await batch_executions(store, result.batch_id)
    assert result.stats.failed == 8
    assert result.stats.retries == 8 * 2  # 1 + max_retries runs of each item
    assert result.stats.errors == {"rate_limited": 8}
    assert all("/" in (e.worker_id or "") for e in executions)  # run by the worker processes
    assert batch.config["calls_bound"] == {"answer": 3}


async def test_each_worker_process_is_sent_the_batchs_options_whole(tmp_path: object) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    retry = RetryPolicy(initial_interval=0.0, jitter=0.0, max_retry_after=0.0)
    options = BatchOptions(
        workers=2, max_concurrency=5, max_retries=7, item_timeout=9.0, deadline=60.0, retry=retry
    )
    async with store, make_runtime(store) as rt:
        await ready(rt)
        result = await rt.run_batch("qa", [{"question": "q"}])
        pool = _Pool(
            store=store,
            batch=await store.get_batch(result.batch_id),
            path=Path(f"{tmp_path}/items.jsonl"),
            options=RunnerOptions(batch=options, strategy="parallel", worker_id="w"),
            shares=concurrency_shares(options.max_concurrency, options.workers),
            backend=None,
            context={"database_url": "sqlite:///x.db", "schema": None},
            keep=False,
        )
        sent = [pickle.loads(pickle.dumps(pool.spec(n, 42.0))).options for n in (0, 1)]
    assert [s.worker_id for s in sent] == ["w/0", "w/1"]
    assert [s.batch.max_concurrency for s in sent] == [3, 2]
    for spec in sent:
        assert spec.strategy == "parallel"
        assert spec.batch.retry == retry  # once dropped on the way to the worker
        assert spec.batch.deadline == 42.0  # what is left of the batch's
        assert spec.batch.model_dump(exclude={"max_concurrency", "deadline"}) == (
            options.model_dump(exclude={"max_concurrency", "deadline"})
        )

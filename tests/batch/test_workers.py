"""Several worker processes on one SQLite database (real subprocesses, forkserver context)."""

from __future__ import annotations

import pytest
from tests.batch._support import SpanLog, peak_overlap
from tests.runtime._support import make_runtime, ready

from dspex.backends.mock import MockBackend
from dspex.batch.workers import concurrency_shares
from dspex.errors import ConfigError
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
        workers = {r.worker_id for r in await store.list_batch_executions(result.batch_id)}
        assert {w.rsplit("/", 1)[-1] for w in workers if w} <= {"0", "1"}


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
    from multiprocessing import forkserver

    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        await rt.start_workers()
        server = forkserver._forkserver._forkserver_pid
        assert server is not None
        await rt.start_workers()  # again: the same server, nothing new
        assert forkserver._forkserver._forkserver_pid == server
        for size in (7, 30):
            result = await rt.run_batch(
                "qa", [{"question": f"q{i}"} for i in range(size)], workers=2
            )
            assert result.stats.completed == size
        assert forkserver._forkserver._forkserver_pid == server  # every batch reused it


async def test_worker_results_sent_back_match_what_the_store_holds(tmp_path: object) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        items = [{"question": f"q{i}"} for i in range(300)]
        result = await rt.run_batch("qa", items, workers=2)
        assert result.results is not None
        stored = [item async for item in rt.batch_results(result.batch_id)]
        assert [r.model_dump() for r in result.results] == [s.model_dump() for s in stored]

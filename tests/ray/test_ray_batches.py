"""Batches on a local Ray cluster of several nodes with PostgreSQL (real actors, real nodes)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from ray.cluster_utils import Cluster
from tests.runtime._support import make_runtime, ready
from tests.support.store_reads import batch_executions

from dspex.backends.mock import MockBackend
from dspex.errors import BatchError, ConfigError, MaxErrorsExceeded
from dspex.records import BatchStatus
from dspex.store import SqlStore

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _items(count: int) -> list[dict[str, str]]:
    return [{"question": f"q{i}"} for i in range(count)]


async def _completed_once(store: SqlStore, batch_id: str, total: int) -> list[str]:
    """Assert every index has one execution, completed; the lease holders that completed them."""
    executions = await batch_executions(store, batch_id)
    indexes = Counter(e.batch_index for e in executions)
    assert sorted(indexes) == list(range(total))
    assert set(indexes.values()) == {1}
    assert {e.status.value for e in executions} == {"completed"}
    return [e.worker_id or "" for e in executions]


async def _held_by(store: SqlStore, batch_id: str, holders: int) -> None:
    """Wait until ``holders`` different actors run items of the batch at once (the items are
    slow enough for every actor to join long before the batch could end without one)."""
    seen: set[str | None] = set()
    while True:
        executions = await batch_executions(store, batch_id)
        running = {e.worker_id for e in executions if e.status.value == "running"}
        seen |= running
        if len(running) >= holders:
            return
        finished = [e for e in executions if e.status.value == "completed"]
        assert not executions or len(finished) < len(executions), f"only {seen} ran"
        await asyncio.sleep(0.05)


async def _wait_for(store: SqlStore, batch_id: str, done: int) -> None:
    while True:
        states = await store.batch_item_states(batch_id)
        if states.get("completed", 0) >= done:
            return
        await asyncio.sleep(0.05)


async def test_a_batch_runs_on_actors_across_the_cluster_and_records_every_item_once(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    backend = MockBackend("default", latency_ms=2)
    async with make_runtime(pg_store, {"default": backend}) as rt:
        await ready(rt)
        result = await rt.run_batch(
            "qa", _items(240), cluster="ray", ray_actors=2, chunk_size=20, max_concurrency=8
        )
        assert result.status == "completed"
        assert result.stats.completed == 240
        assert result.stats.ran == 240
        assert result.results is not None
        assert [r.index for r in result.results] == list(range(240))
        assert all(r.outputs for r in result.results)
        holders = await _completed_once(pg_store, result.batch_id, 240)
    # the actors claimed and recorded the items themselves, under their own lease identities
    # (a chunk goes to whichever actor has room first: one that started sooner may take all)
    actors = {h.rsplit("@", 1)[-1] for h in holders}
    assert actors
    assert actors <= {"ray1", "ray2"}


async def test_losing_a_worker_node_mid_batch_loses_nothing(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    import ray

    node = ray_cluster.add_node(
        node_ip_address="127.0.0.1",
        num_cpus=1,
        object_store_memory=80 * 1024 * 1024,
    )
    ray_cluster.wait_for_nodes()
    backend = MockBackend("default", latency_ms=150)
    try:
        async with make_runtime(pg_store, {"default": backend}) as rt:
            await ready(rt)
            started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            # three one-CPU actors spread over three one-CPU nodes: one runs on the node lost
            task = asyncio.create_task(
                rt.run_batch(
                    "qa",
                    _items(600),
                    cluster="ray",
                    ray_actors=3,
                    chunk_size=20,
                    max_concurrency=6,
                    on_start=started.set_result,
                )
            )
            try:
                batch_id = await started
                # every actor (one on each node) is running items of its own
                await _held_by(pg_store, batch_id, 3)
                ray_cluster.remove_node(node)
                result = await task
            finally:
                task.cancel()  # the test failed: stop the batch before its schema goes
            assert result.status == "completed"
            assert result.stats.completed == 600
            await _completed_once(pg_store, batch_id, 600)
            batch = await pg_store.get_batch(batch_id)
            assert batch.status is BatchStatus.COMPLETED
    finally:
        alive = [n for n in ray.nodes() if n["Alive"]]
        assert len(alive) == 2


async def test_the_deadline_stops_the_actors_and_the_batch_resumes_in_one_process(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    backend = MockBackend("default", latency_ms=100)
    async with make_runtime(pg_store, {"default": backend}) as rt:
        await ready(rt)
        items = _items(400)
        stopped = await rt.run_batch(
            "qa",
            items,
            cluster="ray",
            ray_actors=2,
            chunk_size=10,
            max_concurrency=4,
            deadline=2.0,
        )
        assert stopped.status == "cancelled"
        assert stopped.stop_reason == "deadline"
        assert stopped.stats.completed < 400
        states = await pg_store.batch_item_states(stopped.batch_id)
        assert states.get("running", 0) == 0  # the actors recorded what they were running
        fast = MockBackend("default")
    async with make_runtime(pg_store, {"default": fast}) as local:
        resumed = await local.run_batch("qa", items, resume=stopped.batch_id, max_concurrency=16)
        assert resumed.status == "completed"
        assert resumed.stats.skipped == stopped.stats.completed
        await _completed_once(pg_store, stopped.batch_id, 400)


async def test_cancelling_the_driver_stops_the_actors_and_the_batch_resumes_on_ray(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    async with make_runtime(pg_store, {"default": MockBackend("default", latency_ms=50)}) as rt:
        await ready(rt)
        items = _items(300)
        # started in the background, as the service does
        handle = await rt.start_batch(
            "qa", items, cluster="ray", ray_actors=2, chunk_size=10, max_concurrency=4
        )
        batch_id, task = handle.batch_id, handle.task
        await _wait_for(pg_store, batch_id, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        batch = await pg_store.get_batch(batch_id)
        assert batch.status is BatchStatus.CANCELLED
        assert batch.completed < 300
        states = await pg_store.batch_item_states(batch_id)
        assert states.get("running", 0) == 0
    # resumed on the cluster (the deadline test resumes in one process)
    async with make_runtime(pg_store, {"default": MockBackend("default")}) as rt:
        resumed = await rt.run_batch(
            "qa", items, resume=batch_id, cluster="ray", ray_actors=2, chunk_size=50
        )
        assert resumed.status == "completed"
        assert resumed.stats.skipped == batch.completed
        await _completed_once(pg_store, batch_id, 300)


async def test_a_batch_run_in_one_process_resumes_on_the_cluster(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    items = _items(120)
    failing = MockBackend("default", failure_rate=1.0, seed=3)
    async with make_runtime(pg_store, {"default": failing}) as rt:
        await ready(rt)
        first = await rt.run_batch("qa", items, max_retries=0, max_concurrency=8)
        assert first.stats.failed == 120
    async with make_runtime(pg_store, {"default": MockBackend("default")}) as rt:
        resumed = await rt.run_batch(
            "qa", items, resume=first.batch_id, cluster="ray", ray_actors=2, chunk_size=30
        )
        assert resumed.status == "completed"
        assert resumed.stats.completed == 120
        await _completed_once(pg_store, first.batch_id, 120)


async def test_sqlite_is_refused_on_a_cluster_of_several_nodes_before_the_batch_is_recorded(
    ray_cluster: Cluster, tmp_path: object
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        with pytest.raises(ConfigError, match=r"SQLite cannot be the store .* 2 nodes") as caught:
            await rt.run_batch("qa", _items(5), cluster="ray")
        assert "PostgreSQL" in caught.value.message
        with pytest.raises(ConfigError, match=r"SQLite cannot be the store .* 2 nodes"):
            await rt.start_batch("qa", _items(5), cluster="ray")
        assert await store.list_batches() == []  # refused before anything was recorded


async def test_sqlite_through_ray_client_is_refused_before_the_batch_is_recorded(
    ray_cluster: Cluster, tmp_path: object
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    async with store, make_runtime(store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        with pytest.raises(ConfigError, match=r"SQLite cannot be the store .* Ray Client"):
            await rt.run_batch("qa", _items(5), cluster="ray://127.0.0.1:10001")
        assert await store.list_batches() == []


async def test_max_errors_holds_for_the_batch_as_a_whole_across_actors(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    failing = MockBackend("default", failure_rate=1.0, seed=1)
    async with make_runtime(pg_store, {"default": failing}) as rt:
        await ready(rt)
        with pytest.raises(MaxErrorsExceeded) as caught:
            await rt.run_batch(
                "qa",
                _items(400),
                cluster="ray",
                ray_actors=2,
                chunk_size=10,
                max_concurrency=4,
                max_retries=0,
                max_errors=5,
            )
        batch = await pg_store.get_batch(caught.value.batch_id)
        assert batch.status is BatchStatus.FAILED
        assert batch.failed > 5
        assert batch.failed + batch.cancelled < 400  # the actors stopped claiming
        states = await pg_store.batch_item_states(batch.id)
        assert states.get("running", 0) == 0


class RefusesOtherProcesses(MockBackend):
    """A backend that can be sent to an actor but not unpacked there."""

    def __setstate__(self, state: dict[str, object]) -> None:
        raise RuntimeError("this backend works in the process that made it only")


async def test_an_actor_that_cannot_start_ends_the_batch_with_an_error_naming_it(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    async with make_runtime(pg_store, {"default": RefusesOtherProcesses("default")}) as rt:
        await ready(rt)
        with pytest.raises(BatchError, match=r"Ray actor ray\d.*--resume") as caught:
            await rt.run_batch("qa", _items(20), cluster="ray", ray_actors=1)
        assert caught.value.batch_id is not None


async def test_an_actor_bigger_than_the_cluster_is_refused(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    async with make_runtime(pg_store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        with pytest.raises(ConfigError, match="an actor needs 64"):
            await rt.run_batch("qa", _items(3), cluster="ray", ray_actor_cpus=64)
        assert await pg_store.list_batches() == []  # refused before anything was recorded

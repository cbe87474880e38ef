"""Ray actors kept across batches on one runtime (two-node local cluster, PostgreSQL): the next
batch runs on the same actor processes, one that died meanwhile is replaced, batches at the
same time get actors of their own, and closing the runtime ends every actor."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Callable

import pytest
from ray.cluster_utils import Cluster
from tests.runtime._support import QA, make_runtime, ready
from tests.support.store_reads import batch_executions

from dspex.backends.mock import MockBackend
from dspex.batch.ray_actors import RayExecutor
from dspex.runtime import Runtime
from dspex.store import SqlStore

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

GONE_WITHIN_S = 60.0  # a bound on waiting for Ray to end a process, not a measured time


def _items(count: int) -> list[dict[str, str]]:
    return [{"question": f"q{i}"} for i in range(count)]


def _executor(rt: Runtime) -> RayExecutor:
    executor = rt._ctx.executors.ray
    assert isinstance(executor, RayExecutor)
    return executor


def _actors(rt: Runtime) -> dict[str, int | None]:
    """The runtime's Ray actors: name -> process id."""
    return {actor.name: actor.pid for actor in _executor(rt).actors}


async def _holders(store: SqlStore, batch_id: str, total: int) -> set[str]:
    """Assert every index has one execution, completed; the actors that completed them."""
    executions = await batch_executions(store, batch_id)
    indexes = Counter(e.batch_index for e in executions)
    assert sorted(indexes) == list(range(total))
    assert set(indexes.values()) == {1}
    assert {e.status.value for e in executions} == {"completed"}
    return {(e.worker_id or "").rsplit("@", 1)[-1] for e in executions}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds (Ray ends processes and frees CPUs on its own time)."""
    try:
        async with asyncio.timeout(GONE_WITHIN_S):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not so after {GONE_WITHIN_S:g}s: {what}") from None


def _cpus_free() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


async def test_the_second_batch_on_a_runtime_runs_on_the_actors_of_the_first(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    backend = MockBackend("default", latency_ms=2)
    async with make_runtime(pg_store, {"default": backend}) as rt:
        await ready(rt)
        await ready(rt, {**QA, "name": "qa2"})
        first = await rt.run_batch(
            "qa", _items(120), cluster="ray", ray_actors=2, chunk_size=10, max_concurrency=4
        )
        assert first.status == "completed"
        assert first.stats.completed == 120
        actors = _actors(rt)
        assert set(actors) == {"ray1", "ray2"}
        assert all(pid is not None and _alive(pid) for pid in actors.values())
        assert await _holders(pg_store, first.batch_id, 120) <= set(actors)
        # another program, same store, settings, backends and actor CPUs: the same actors
        second = await rt.run_batch(
            "qa2", _items(80), cluster="ray", ray_actors=2, chunk_size=10, max_concurrency=4
        )
        assert second.status == "completed"
        assert second.stats.completed == 80
        assert second.results is not None
        assert [r.index for r in second.results] == list(range(80))
        assert _actors(rt) == actors  # same names, same processes
        assert await _holders(pg_store, second.batch_id, 80) <= set(actors)


async def test_an_actor_killed_between_batches_is_replaced_and_the_batch_completes(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    async with make_runtime(pg_store, {"default": MockBackend("default", latency_ms=2)}) as rt:
        await ready(rt)
        first = await rt.run_batch(
            "qa", _items(60), cluster="ray", ray_actors=2, chunk_size=10, max_concurrency=4
        )
        assert first.status == "completed"
        before = _actors(rt)
        victim = before["ray1"]
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        await _until(lambda: not _alive(victim), "the killed actor's process is gone")
        second = await rt.run_batch(
            "qa", _items(60), cluster="ray", ray_actors=2, chunk_size=10, max_concurrency=4
        )
        assert second.status == "completed"
        assert second.stats.completed == 60
        after = _actors(rt)
        assert after == {"ray2": before["ray2"], "ray3": after["ray3"]}
        assert after["ray3"] not in (None, victim)
        assert await _holders(pg_store, second.batch_id, 60) <= {"ray2", "ray3"}
        # a replaced actor is not a lost one: nothing was cancelled
        states = await pg_store.batch_item_states(second.batch_id)
        assert states == {"completed": 60}


async def test_batches_at_the_same_time_on_one_runtime_get_actors_of_their_own(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    async with make_runtime(pg_store, {"default": MockBackend("default", latency_ms=20)}) as rt:
        await ready(rt)
        how = {"cluster": "ray", "ray_actors": 1, "chunk_size": 10, "max_concurrency": 2}
        one, two = await asyncio.gather(
            rt.run_batch("qa", _items(60), **how), rt.run_batch("qa", _items(60), **how)
        )
        assert (one.status, two.status) == ("completed", "completed")
        held = [await _holders(pg_store, b.batch_id, 60) for b in (one, two)]
        assert len(held[0]) == len(held[1]) == 1
        assert held[0] != held[1]
        assert set(_actors(rt)) == held[0] | held[1]
        # the next batch takes a kept actor
        third = await rt.run_batch("qa", _items(20), **how)
        assert await _holders(pg_store, third.batch_id, 20) <= held[0] | held[1]


async def test_closing_the_runtime_ends_every_actor_it_kept(
    ray_cluster: Cluster, pg_store: SqlStore
) -> None:
    import ray

    total = float(ray.cluster_resources()["CPU"])
    await _until(lambda: _cpus_free() == total, "no actor of an earlier test holds a CPU")
    async with make_runtime(pg_store, {"default": MockBackend("default")}) as rt:
        await ready(rt)
        result = await rt.run_batch("qa", _items(40), cluster="ray", ray_actors=2, chunk_size=10)
        assert result.status == "completed"
        pids = [pid for pid in _actors(rt).values() if pid is not None]
        assert len(pids) == 2
        # kept: they hold their CPUs until the runtime closes
        await _until(lambda: _cpus_free() == total - 2, "the kept actors hold their CPUs")
    await _until(lambda: not any(_alive(pid) for pid in pids), "every actor process ended")
    await _until(lambda: _cpus_free() == total, "every actor's CPU is free again")
    assert ray.is_initialized()  # the test's own connection is left as it was

"""The body of a batch's Ray actor, run here as a plain object (Ray makes it an actor by name):
it builds its runtime once, takes chunks with backpressure, claims and records its items, and
stops recording what it was running."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path

from tests.runtime._support import QA, make_runtime, ready
from tests.support.store_reads import batch_executions

from dspex.backends.mock import MockBackend
from dspex.batch._ray_actor import AHEAD_CHUNKS, BatchActor
from dspex.batch.inputs import RawItem
from dspex.batch.options import BatchOptions
from dspex.batch.runner import RunnerOptions
from dspex.batch.workers import WorkerSpec
from dspex.config import Settings
from dspex.store import SqlStore


async def _setup(tmp_path: Path, total: int, latency_ms: float) -> tuple[SqlStore, WorkerSpec]:
    url = f"sqlite:///{tmp_path}/dspex.db"
    store = SqlStore(url)
    async with store, make_runtime(store) as rt:
        await ready(rt, QA)
        batch = await store.create_batch("qa", 1, {}, total)
    spec = WorkerSpec(
        number=0,
        database_url=url,
        schema=None,
        batch_id=batch.id,
        program="qa",
        version=1,
        backend=None,
        input_path=None,
        options=RunnerOptions(
            batch=BatchOptions(max_concurrency=4, chunk_size=5), worker_id="run/0"
        ),
        settings=Settings().model_dump(mode="json"),
        backends={"default": MockBackend("default", latency_ms=latency_ms)},
        keep=True,
    )
    return SqlStore(url), spec


def _chunk(start: int, size: int = 5) -> list[RawItem]:
    return [RawItem(i, None, {"question": f"q{i}"}) for i in range(start, start + size)]


async def test_an_actor_runs_the_chunks_it_is_fed_and_records_them_under_its_name(
    tmp_path: Path,
) -> None:
    store, spec = await _setup(tmp_path, 20, latency_ms=1)
    actor = BatchActor(spec, "ray7")
    begun = await actor.begin(spec)
    assert begun["seconds"] >= 0.0
    assert begun["pid"] == os.getpid()
    fed = [await actor.feed(_chunk(start)) for start in range(0, 20, 5)]
    assert fed == [True] * 4
    outcome = await actor.finish()
    assert outcome["reason"] == "completed"
    assert outcome["ran"] == 20
    assert sorted(index for index, _ in outcome["kept"]) == list(range(20))
    async with store:
        rows = await batch_executions(store, spec.batch_id)
    assert {r.status.value for r in rows} == {"completed"}
    assert {r.worker_id for r in rows} == {"run/0@ray7"}
    await actor.close()


async def test_feeding_waits_while_the_actor_holds_enough_chunks(tmp_path: Path) -> None:
    store, spec = await _setup(tmp_path, 40, latency_ms=60_000)
    actor = BatchActor(spec, "ray1")
    await actor.begin(spec)
    feeds = [asyncio.ensure_future(actor.feed(_chunk(start))) for start in range(0, 40, 5)]
    await asyncio.sleep(0.3)
    # the runner claimed what it can run and read ahead; the actor holds AHEAD_CHUNKS more;
    # the rest wait for room: the driver cannot push the whole input onto one actor
    waiting = [f for f in feeds if not f.done()]
    assert waiting
    assert len(feeds) - len(waiting) <= 8 - AHEAD_CHUNKS + 1
    actor.stop()
    assert await asyncio.gather(*waiting) == [False] * len(waiting)
    outcome = await actor.finish()
    assert outcome["reason"] == "cancelled"
    assert not await actor.feed(_chunk(40))
    async with store:
        rows = await batch_executions(store, spec.batch_id)
    assert rows
    assert "running" not in {r.status.value for r in rows}  # recorded cancelled when stopped
    assert {r.status.value for r in rows} == {"cancelled"}
    await actor.close()


async def test_an_actor_stopped_while_it_starts_runs_nothing(tmp_path: Path) -> None:
    _, spec = await _setup(tmp_path, 5, latency_ms=1)
    actor = BatchActor(spec, "ray1")
    starting = asyncio.ensure_future(actor.begin(spec))
    await asyncio.sleep(0)
    actor.stop()
    await starting
    assert not await actor.feed(_chunk(0))
    outcome = await actor.finish()
    assert (outcome["reason"], outcome["ran"]) == ("cancelled", 0)
    await actor.close()


async def test_an_actor_runs_batch_after_batch_of_other_programs_on_the_runtime_it_built(
    tmp_path: Path,
) -> None:
    store, spec = await _setup(tmp_path, 10, latency_ms=1)
    async with store, make_runtime(store) as rt:
        await ready(rt, {**QA, "name": "qa2"})
        other = await store.create_batch("qa2", 1, {}, 10)
    actor = BatchActor(spec, "ray3")
    await actor.begin(spec)
    assert all([await actor.feed(_chunk(0)), await actor.feed(_chunk(5))])
    assert (await actor.finish())["ran"] == 10
    runtime = actor._runtime
    second = replace(spec, batch_id=other.id, program="qa2")
    await actor.begin(second)
    assert actor._runtime is runtime  # built once: store, engine and backends kept
    assert all([await actor.feed(_chunk(0)), await actor.feed(_chunk(5))])
    outcome = await actor.finish()
    assert (outcome["reason"], outcome["ran"]) == ("completed", 10)
    await actor.close()
    assert actor._runtime is None
    async with store:
        for batch_id in (spec.batch_id, other.id):
            rows = await batch_executions(store, batch_id)
            assert sorted(r.batch_index for r in rows) == list(range(10))
            assert {r.status.value for r in rows} == {"completed"}

"""``dspex batch --cluster HOST:PORT`` in a real process on the local Ray cluster, PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ray.cluster_utils import Cluster
from tests.crash._support import postgres_database
from tests.support.store_reads import batch_executions

import dspex
from dspex.records import BatchStatus
from dspex.store import open_store

pytestmark = pytest.mark.slow

SLOW_QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "config": {"mock_latency_ms": 40},
        }
    },
}
LIMIT_S = 120.0


@pytest.fixture
async def database(postgres_url: str) -> AsyncIterator[str]:
    async with postgres_database(postgres_url) as url:
        async with dspex.Runtime.open(url) as rt:
            await rt.register(SLOW_QA)
            await rt.initialize("qa")
        yield url


def _batch(cwd: Path, url: str, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    env["DSPEX_DATABASE_URL"] = url
    return subprocess.Popen(
        [sys.executable, "-m", "dspex", "batch", "qa", "in.jsonl", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def _completed(url: str, batch_id: str | None) -> int:
    if batch_id is None:
        return 0
    async with open_store(url) as store:
        return (await store.batch_item_states(batch_id)).get("completed", 0)


@pytest.mark.postgres
async def test_sigterm_on_the_driver_stops_the_actors_and_the_batch_resumes_here(
    ray_cluster: Cluster, database: str, tmp_path: Path
) -> None:
    total = 300
    lines = (json.dumps({"question": f"q{i}"}) for i in range(total))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    process = _batch(
        tmp_path,
        database,
        "--cluster",
        ray_cluster.address,
        "--ray-actors",
        "2",
        "--concurrency",
        "4",
    )
    try:
        async with open_store(database) as store:
            batch_id = None
            limit = time.monotonic() + LIMIT_S
            while time.monotonic() < limit and process.poll() is None:
                batches = await store.list_batches()
                batch_id = batches[0].id if batches else None
                if await _completed(database, batch_id) >= 10:
                    break
                await asyncio.sleep(0.1)
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=LIMIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, err
    assert "Traceback" not in err
    assert batch_id is not None
    assert f"--resume {batch_id}" in err
    async with open_store(database) as store:
        rows = await batch_executions(store, batch_id)
        batch = await store.get_batch(batch_id)
    assert batch.status is BatchStatus.CANCELLED
    assert Counter(r.status.value for r in rows)["running"] == 0
    assert batch.completed < total

    # resumed in one process, without the cluster: each item completes exactly once
    resumed = _batch(tmp_path, database, "--resume", batch_id, "--json")
    out, err = resumed.communicate(timeout=LIMIT_S)
    assert resumed.returncode == 0, err
    result = json.loads(out)
    assert result["status"] == "completed"
    assert result["stats"]["skipped"] == batch.completed
    async with open_store(database) as store:
        rows = await batch_executions(store, batch_id)
    assert sorted(r.batch_index for r in rows) == list(range(total))
    assert {r.status.value for r in rows} == {"completed"}


async def test_cluster_ray_starts_a_local_ray_for_the_run_where_sqlite_is_accepted(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/dspex.db"
    async with dspex.Runtime.open(url) as rt:
        await rt.register(SLOW_QA)
        await rt.initialize("qa")
    lines = (json.dumps({"question": f"q{i}"}) for i in range(60))
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    process = _batch(tmp_path, url, "--cluster", "ray", "--ray-actors", "1", "--json")
    out, err = process.communicate(timeout=LIMIT_S)
    assert process.returncode == 0, err
    result = json.loads(out)
    assert (result["status"], result["stats"]["completed"]) == ("completed", 60)
    async with open_store(url) as store:
        (batch,) = await store.list_batches()
        assert batch.config["cluster"] == "local"  # a one-node Ray of its own, on this machine
        rows = await batch_executions(store, batch.id)
    assert {r.worker_id.rsplit("@", 1)[-1] for r in rows if r.worker_id} == {"ray1"}


@pytest.mark.parametrize("where", ["cluster", "ray_client"])
async def test_sqlite_on_a_cluster_of_several_machines_is_refused_with_nothing_recorded(
    ray_cluster: Cluster, tmp_path: Path, where: str
) -> None:
    url = f"sqlite:///{tmp_path}/dspex.db"
    async with dspex.Runtime.open(url) as rt:
        await rt.register(SLOW_QA)
        await rt.initialize("qa")
    (tmp_path / "in.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    address = ray_cluster.address if where == "cluster" else "ray://127.0.0.1:10001"
    process = _batch(tmp_path, url, "--cluster", address)
    _, err = process.communicate(timeout=LIMIT_S)
    assert process.returncode == 2, err  # a configuration mistake
    assert "Traceback" not in err
    assert "SQLite cannot be the store" in err
    assert "PostgreSQL" in err
    assert "--resume" not in err  # there is no batch to resume
    async with open_store(url) as store:
        assert await store.list_batches() == []


_TWO_BATCHES_ON_A_LOCAL_RAY = """
import asyncio, json, sys

import ray

import dspex

QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


async def main(url):
    items = [{"question": f"q{i}"} for i in range(30)]
    seen = []
    async with dspex.Runtime.open(url) as rt:
        await rt.register(QA)
        await rt.initialize("qa")
        for _ in range(2):
            result = await rt.run_batch("qa", items, cluster="local", ray_actors=1)
            assert (result.status, result.stats.completed) == ("completed", 30), result
            seen.append([[a.name, a.pid] for a in rt._ctx.executors.ray.actors])
        connected = ray.is_initialized()
    print(json.dumps({"actors": seen, "connected": connected, "after": ray.is_initialized()}))


asyncio.run(main(sys.argv[1]))
"""


def test_a_runtime_keeps_the_local_ray_it_started_across_batches_and_stops_it_on_close(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/dspex.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    process = subprocess.run(
        [sys.executable, "-c", _TWO_BATCHES_ON_A_LOCAL_RAY, url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout.strip().splitlines()[-1])
    first, second = report["actors"]
    assert first == second  # the second batch ran on the actor process of the first
    assert len(first) == 1
    assert report["connected"]  # kept between the batches
    assert not report["after"]  # the Ray it started is shut down when the runtime closes

"""Choosing where a batch runs: the cluster options, the ``[cluster]`` settings, the checks
made before anything is recorded, and that Ray is imported only for a cluster."""

from __future__ import annotations

import subprocess
import sys

import pytest
from tests.runtime._support import make_runtime, ready

from dspex.batch.executors import Executors, InProcess, InProcesses
from dspex.batch.options import BatchOptions
from dspex.batch.ray_actors import actor_count
from dspex.config import ClusterSettings, Settings, load_settings
from dspex.errors import ConfigError, ValidationError
from dspex.store import MemoryStore


@pytest.mark.parametrize(
    "cluster", ["ray", "local", "auto", "ray://head.example:10001", "10.0.0.5:6379"]
)
def test_a_cluster_is_ray_or_a_ray_address(cluster: str) -> None:
    assert BatchOptions.of(cluster=cluster).cluster == cluster


@pytest.mark.parametrize("cluster", ["spark", "head:port", ":6379", ""])
def test_anything_else_is_refused_by_name(cluster: str) -> None:
    with pytest.raises(ValidationError) as caught:
        BatchOptions.of(cluster=cluster)
    assert [d.field for d in caught.value.errors] == ["cluster"]


def test_worker_processes_and_a_cluster_are_not_given_together() -> None:
    with pytest.raises(ValidationError, match="invalid batch options") as caught:
        BatchOptions.of(cluster="ray", workers=2)
    assert "ray_actors instead" in caught.value.errors[0].message


def test_actor_options_need_a_cluster() -> None:
    with pytest.raises(ValidationError) as caught:
        BatchOptions.of(ray_actors=2)
    assert "need a cluster" in caught.value.errors[0].message


def test_each_option_picks_its_executor_and_the_ray_one_is_kept() -> None:
    from dspex.batch.ray_actors import RayExecutor

    executors = Executors()
    assert isinstance(executors.for_options(BatchOptions()), InProcess)
    assert isinstance(executors.for_options(BatchOptions(workers=2)), InProcesses)
    ray = executors.for_options(BatchOptions(cluster="ray"))
    assert isinstance(ray, RayExecutor)
    assert executors.for_options(BatchOptions(cluster="auto")) is ray  # one per runtime


def test_the_cluster_settings_fill_what_the_batch_left_open() -> None:
    settings = ClusterSettings(
        kind="ray", address="auto", actors=3, actor_cpus=0.5, actor_resources={"lm": 1.0}
    )
    options = BatchOptions().on_cluster(settings)
    assert options.cluster == "auto"
    assert options.ray_actors == 3
    assert options.ray_actor_cpus == 0.5
    assert options.ray_actor_resources == {"lm": 1.0}
    # what the batch gives wins; "ray" means the configured address
    given = BatchOptions(cluster="ray", ray_actors=1, ray_actor_cpus=2.0).on_cluster(settings)
    assert (given.cluster, given.ray_actors, given.ray_actor_cpus) == ("auto", 1, 2.0)
    explicit = BatchOptions(cluster="ray://h:10001").on_cluster(settings)
    assert explicit.cluster == "ray://h:10001"
    # worker processes asked for stay on this machine
    assert BatchOptions(workers=2).on_cluster(settings).cluster is None


def test_local_settings_leave_a_batch_on_this_machine() -> None:
    assert BatchOptions().on_cluster(ClusterSettings()).cluster is None
    local = BatchOptions(cluster="ray").on_cluster(ClusterSettings())
    assert local.cluster == "local"
    assert local.ray_actor_cpus == 1.0


def test_the_cluster_table_is_read_from_dspex_toml(tmp_path: object) -> None:
    path = f"{tmp_path}/dspex.toml"
    with open(path, "w", encoding="utf-8") as file:
        file.write('[cluster]\nkind = "ray"\naddress = "auto"\nactor_cpus = 2\n')
    settings = load_settings(path, env={})
    assert settings.cluster == ClusterSettings(kind="ray", address="auto", actor_cpus=2.0)
    assert Settings().cluster.kind == "local"


def test_actors_default_to_what_the_cluster_cpus_hold_within_the_concurrency() -> None:
    assert actor_count(None, 8.0, 1.0, 32) == 8
    assert actor_count(None, 8.0, 3.0, 32) == 2
    assert actor_count(None, 0.5, 1.0, 32) == 1
    assert actor_count(None, 64.0, 1.0, 4) == 4  # more actors than items at once would idle
    assert actor_count(5, 2.0, 1.0, 32) == 5  # as asked: Ray queues what does not fit yet


async def test_a_cluster_needs_a_database_the_actors_can_open() -> None:
    async with MemoryStore() as store, make_runtime(store) as rt:
        await ready(rt)
        with pytest.raises(ConfigError, match="Ray cluster needs a database"):
            await rt.run_batch("qa", [{"question": "q"}], cluster="ray")
        assert await store.list_batches() == []  # refused before anything was recorded


def test_importing_dspex_and_running_a_batch_here_never_imports_ray() -> None:
    code = (
        "import asyncio, sys, dspex\n"
        "async def main():\n"
        "    async with dspex.Runtime.open('memory://') as rt:\n"
        "        await rt.register({'name': 'qa', 'signature': 'question: str -> answer: str',"
        " 'modules': {'a': {'kind': 'predict', 'signature': 'question: str -> answer: str'}}})\n"
        "        await rt.initialize('qa')\n"
        "        r = await rt.run_batch('qa', [{'question': 'q'}] * 3)\n"
        "        assert r.stats.completed == 3, r\n"
        "asyncio.run(main())\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

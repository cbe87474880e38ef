"""A local Ray cluster of several nodes, every one bound to 127.0.0.1, for the whole session.

Ray is imported here only (``import dspex`` never imports it). The variables are set before
that import: Ray reads them once. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take
127.0.0.1 as this machine's address, so the driver reaches the nodes on loopback (no traffic
leaves the machine); ``RAY_AUTH_MODE=disabled`` keeps Ray from writing a token under the home
directory. Each node has one CPU and a small object store; the cluster is shut down at the end.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
from ray.cluster_utils import Cluster  # noqa: E402
from tests.store.conftest import PgSchema  # noqa: E402

from dspex.store import SqlStore  # noqa: E402

OBJECT_STORE = 80 * 1024 * 1024
NODE: dict[str, Any] = {
    "node_ip_address": "127.0.0.1",
    "num_cpus": 1,
    "object_store_memory": OBJECT_STORE,
}


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Cluster]:
    """A head node and one worker node (one CPU each), with this process connected."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={**NODE, "include_dashboard": False},
    )
    try:
        cluster.add_node(**NODE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
async def pg_store(postgres_url: str) -> AsyncIterator[SqlStore]:
    """A fresh PostgreSQL schema (real clock: actors in other processes share its leases)."""
    schema = PgSchema(postgres_url)
    await schema.create()
    try:
        async with SqlStore(schema.url, schema=schema.name, auto_upgrade=True) as store:
            yield store
    finally:
        await schema.drop()

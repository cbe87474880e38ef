"""The MaintenanceStore contract for the database's own health (every implementation).

What cleanup repairs (expired leases, finished batches, stuck programs, old executions) and what
health counts are covered on every implementation by ``tests/cleanup/test_reaper.py``.
"""

from __future__ import annotations

from dspex.store import Store


async def test_ping_reports_a_latency_in_milliseconds(store: Store) -> None:
    latency = await store.ping()
    assert 0.0 <= latency < 5_000.0


async def test_a_fresh_store_is_at_the_newest_schema(store: Store) -> None:
    assert await store.is_current()
    assert await store.schema_revision() is not None

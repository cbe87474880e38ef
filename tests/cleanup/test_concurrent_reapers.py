"""Two reapers over one database at once: each expired execution is re-queued exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from tests.store._clock import FakeClock
from tests.store.conftest import PgSchema

from dspex.records import ExecutionStatus
from dspex.store import SqlStore

ITEMS = 200


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two independent stores (separate connection pools) on the same database."""
    async with AsyncExitStack() as stack:
        if request.param == "sqlite":
            url, options = f"sqlite:///{tmp_path / 'dspex.db'}", {}
        else:
            schema = PgSchema(request.getfixturevalue("postgres_url"))
            await schema.create()
            stack.push_async_callback(schema.drop)
            url, options = schema.url, {"schema": schema.name, "auto_upgrade": True}
        first = await stack.enter_async_context(SqlStore(url, clock=clock, **options))
        second = await stack.enter_async_context(SqlStore(url, clock=clock, **options))
        yield first, second


async def test_two_concurrent_reapers_requeue_each_execution_exactly_once(
    two_stores: tuple[SqlStore, SqlStore], clock: FakeClock
) -> None:
    first, second = two_stores
    await first.put_program("qa", {"modules": []}, "h")
    batch = await first.create_batch("qa", 1, {}, ITEMS)
    ids = []
    for index in range(ITEMS):
        record = await first.start_execution(
            "qa", 1, {}, worker_id="dead", lease_seconds=30, batch_id=batch.id, batch_index=index
        )
        ids.append(record.id)
    clock.advance(60)

    async def drain(store: SqlStore) -> list[str]:
        done: list[str] = []
        while True:
            result = await store.reap_expired_leases(limit=25)
            done.extend(result.requeued)
            if not result.total:
                return done

    a, b = await asyncio.gather(drain(first), drain(second))
    assert sorted(a + b) == sorted(ids)
    assert not set(a) & set(b)
    for eid in ids[:5]:
        record = await first.get_execution(eid)
        assert (record.status, record.attempts) == (ExecutionStatus.PENDING, 1)

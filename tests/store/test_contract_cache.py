"""The CacheStore contract: responses by request key, TTL, statistics and clearing (every
implementation)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.store._clock import FakeClock

from dspex.errors import StorageError
from dspex.records import ExecutionStatus, FinishRequest, ProgramRecord, StepRecord, StepStatus
from dspex.store import SqlStore, Store
from dspex.store.cache import CacheEntry, ModelCacheStats


def _entry(key: str, clock: FakeClock, **changes: Any) -> CacheEntry:
    values: dict[str, Any] = {
        "key": key,
        "program": "qa",
        "module": "answer",
        "backend": "default",
        "model": "openai/m",
        "response": {"outputs": {"answer": "Paris"}, "extras": {}, "usage": {}},
        "cost_usd": 0.25,
        "expires_at": clock.now + timedelta(hours=1),
    }
    values.update(changes)
    return CacheEntry(**values)


async def test_a_stored_response_is_found_by_its_key(store: Store, clock: FakeClock) -> None:
    await store.put_cached(_entry("k1", clock))
    found = await store.get_cached("k1")
    assert found is not None
    assert found.response == {"outputs": {"answer": "Paris"}, "extras": {}, "usage": {}}
    assert (found.program, found.module, found.backend, found.model) == (
        "qa",
        "answer",
        "default",
        "openai/m",
    )
    assert found.cost_usd == pytest.approx(0.25)
    assert found.created_at is not None
    assert found.size_bytes > 0
    assert await store.get_cached("other") is None


async def test_an_expired_response_is_not_found(store: Store, clock: FakeClock) -> None:
    await store.put_cached(_entry("k1", clock))
    await store.put_cached(_entry("forever", clock, expires_at=None))
    clock.advance(3601)
    assert await store.get_cached("k1") is None
    assert await store.get_cached("forever") is not None


async def test_storing_a_key_again_replaces_its_response(store: Store, clock: FakeClock) -> None:
    await store.put_cached(_entry("k1", clock))
    await store.put_cached(_entry("k1", clock, response={"outputs": {"answer": "Lyon"}}))
    found = await store.get_cached("k1")
    assert found is not None
    assert found.response == {"outputs": {"answer": "Lyon"}}
    assert (await store.cache_stats()).entries == 1


async def test_stats_count_entries_size_expired_and_models(store: Store, clock: FakeClock) -> None:
    assert (await store.cache_stats()).entries == 0
    await store.put_cached(_entry("a", clock))
    await store.put_cached(_entry("b", clock, model="other/m", expires_at=clock.now))
    await store.put_cached(_entry("c", clock, program="rag"))
    stats = await store.cache_stats()
    assert (stats.entries, stats.expired) == (3, 1)
    single = await store.get_cached("a")
    assert single is not None
    assert stats.size_bytes == 3 * single.size_bytes
    assert stats.by_model == (
        ModelCacheStats("openai/m", 2, 2 * single.size_bytes),
        ModelCacheStats("other/m", 1, single.size_bytes),
    )
    assert stats.oldest is not None
    assert stats.newest is not None
    assert stats.oldest < stats.newest
    only = await store.cache_stats(program="rag")
    assert (only.entries, only.by_model[0].model) == (1, "openai/m")


async def test_stats_count_the_hits_recorded_on_steps(store: Store, program: ProgramRecord) -> None:
    execution = await store.start_execution("qa", 1, {"q": "x"}, worker_id="w", lease_seconds=30)
    assert execution.lease_token is not None
    steps = [
        StepRecord("answer", StepStatus.COMPLETED, cache_hit=True, cost_saved_usd=0.5),
        StepRecord("check", StepStatus.COMPLETED, cost_usd=0.1),
    ]
    await store.finish_executions(
        [FinishRequest(execution.id, execution.lease_token, ExecutionStatus.COMPLETED, steps=steps)]
    )
    recorded = await store.list_steps(execution.id)
    assert [(s.cache_hit, s.cost_saved_usd) for s in recorded] == [(True, 0.5), (False, 0.0)]
    stats = await store.cache_stats()
    assert (stats.hits, stats.cost_saved_usd) == (1, pytest.approx(0.5))
    assert (await store.cache_stats(program="qa")).hits == 1
    assert (await store.cache_stats(program="other")).hits == 0


async def test_clear_deletes_by_program_age_and_expiry(store: Store, clock: FakeClock) -> None:
    await store.put_cached(_entry("old", clock))
    clock.advance(60)
    cut = clock.now
    await store.put_cached(_entry("rag", clock, program="rag"))
    await store.put_cached(_entry("gone", clock, expires_at=clock.now))
    await store.put_cached(_entry("new", clock))
    assert await store.clear_cache(expired=True, dry_run=True) == 1
    assert await store.clear_cache(expired=True) == 1
    assert await store.get_cached("new") is not None
    assert await store.clear_cache(created_before=cut) == 1
    assert await store.get_cached("old") is None
    assert await store.clear_cache(program="rag") == 1
    assert await store.cache_stats() == await store.cache_stats()
    assert (await store.cache_stats()).entries == 1
    assert await store.clear_cache() == 1
    assert (await store.cache_stats()).entries == 0


async def test_a_response_that_is_not_json_is_refused(store: Store, clock: FakeClock) -> None:
    with pytest.raises(StorageError, match="not JSON-serialisable"):
        await store.put_cached(_entry("k", clock, response={"outputs": {1, 2}}))
    assert await store.get_cached("k") is None


async def test_sqlite_lookups_see_other_connections_and_report_a_broken_table(
    tmp_path: Path, clock: FakeClock
) -> None:
    url = f"sqlite:///{tmp_path / 'dspex.db'}"
    async with SqlStore(url, clock=clock) as reader, SqlStore(url, clock=clock) as writer:
        assert await reader.get_cached("k1") is None  # opens the point-read connection
        await writer.put_cached(_entry("k1", clock))
        found = await reader.get_cached("k1")
        assert found is not None
        assert found.created_at is not None
        assert found.created_at.tzinfo is not None
        assert found.response == {"outputs": {"answer": "Paris"}, "extras": {}, "usage": {}}
        with sqlite3.connect(tmp_path / "dspex.db") as raw:
            raw.execute("DROP TABLE response_cache")
        with pytest.raises(StorageError, match="response_cache"):
            await reader.get_cached("k1")

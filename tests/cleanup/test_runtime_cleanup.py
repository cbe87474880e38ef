"""``Runtime.cleanup`` and ``reap_on_start``: a worker repairs what a dead one left running."""

from __future__ import annotations

from tests.store._clock import FakeClock

from dspex.backends.mock import MockBackend
from dspex.config import Settings
from dspex.records import ExecutionStatus
from dspex.runtime import Runtime
from dspex.store import MemoryStore


async def _dead_execution(store: MemoryStore, clock: FakeClock) -> str:
    await store.put_program("qa", {"modules": []}, "h")
    record = await store.start_execution("qa", 1, {}, worker_id="dead", lease_seconds=30)
    clock.advance(60)
    return record.id


def _runtime(store: MemoryStore, *, reap_on_start: bool) -> Runtime:
    backends = {"default": MockBackend("default")}
    return Runtime(Settings(), store, backends=backends, reap_on_start=reap_on_start)


async def test_a_runtime_with_reap_on_start_reaps_when_it_starts(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    dead = await _dead_execution(store, clock)
    async with _runtime(store, reap_on_start=True):
        record = await store.get_execution(dead)
    assert record.status is ExecutionStatus.FAILED
    assert record.error_code == "lease_expired"


async def test_a_runtime_without_it_leaves_the_execution_to_cleanup(clock: FakeClock) -> None:
    store = MemoryStore(clock=clock)
    dead = await _dead_execution(store, clock)
    async with _runtime(store, reap_on_start=False) as rt:
        assert (await store.get_execution(dead)).status is ExecutionStatus.RUNNING
        preview = await rt.cleanup(dry_run=True)
        report = await rt.cleanup()
    assert preview.lease_expired.ids == report.lease_expired.ids == [dead]

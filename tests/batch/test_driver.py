"""The driver lease of a batch run: renewed while the run goes on, given up when taken over,
kept through a store hiccup, released at the end (fake time, in-memory store)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest

from dspex.batch.driver import BatchDriver
from dspex.errors import StorageError
from dspex.records import BatchRecord
from dspex.store import MemoryStore

pytestmark = pytest.mark.looptime

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


class FlakyStore(MemoryStore):
    """A memory store whose next ``renew``/``release`` calls fail, as a lost connection does."""

    renew_failures = 0
    release_failures = 0

    async def renew_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float
    ) -> BatchRecord:
        if self.renew_failures:
            self.renew_failures -= 1
            raise StorageError("database error: connection lost")
        return await super().renew_batch_driver(batch_id, driver, lease_seconds)

    async def release_batch_driver(self, batch_id: str, driver: str) -> None:
        if self.release_failures:
            self.release_failures -= 1
            raise StorageError("database error: connection lost")
        await super().release_batch_driver(batch_id, driver)


async def _batch(store: MemoryStore) -> str:
    await store.put_program("qa", {"modules": ["answer"]}, "hash-1")
    return (await store.create_batch("qa", 1, {}, total=1)).id


def _store() -> FlakyStore:
    loop = asyncio.get_running_loop()
    return FlakyStore(clock=lambda: EPOCH + timedelta(seconds=loop.time()))


async def test_the_lease_is_renewed_while_the_run_goes_on_and_released_at_the_end() -> None:
    store = _store()
    batch_id = await _batch(store)
    driver = BatchDriver(store, batch_id, "me", 30.0)
    await driver.start()
    await asyncio.sleep(100)  # past three leases: renewed all along
    record = await store.get_batch(batch_id)
    assert record.driver == "me"
    assert not record.driver_lapsed(store.clock())
    await driver.stop()
    assert (await store.get_batch(batch_id)).driver is None


async def test_a_store_hiccup_is_survived_by_the_next_renewal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _store()
    store.renew_failures = 1
    batch_id = await _batch(store)
    driver = BatchDriver(store, batch_id, "me", 30.0)
    with caplog.at_level(logging.WARNING, logger="dspex.batch"):
        await driver.start()
        await asyncio.sleep(25)
    assert "renewing the lease of batch" in caplog.text
    assert not (await store.get_batch(batch_id)).driver_lapsed(store.clock())
    store.release_failures = 1
    with caplog.at_level(logging.WARNING, logger="dspex.batch"):
        await driver.stop()
    assert "releasing the lease of batch" in caplog.text


async def test_a_driver_taken_over_stops_renewing_and_cancels_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _store()
    batch_id = await _batch(store)
    driver = BatchDriver(store, batch_id, "me", 30.0)
    await driver.start()
    work = asyncio.get_running_loop().create_future()
    driver.watch(work)
    await store.take_batch_driver(batch_id, "other", 30.0)
    await store.request_batch_cancel(batch_id)
    with caplog.at_level(logging.WARNING, logger="dspex.batch"):
        await asyncio.sleep(11)
    assert "is driven by other now" in caplog.text
    assert not work.cancelled()
    assert not driver.cancel_requested
    await driver.stop()
    assert (await store.get_batch(batch_id)).driver == "other"  # not ours to release
    work.cancel()


async def test_a_cancel_requested_before_the_run_is_watched_cancels_it_once_watched() -> None:
    store = _store()
    batch_id = await _batch(store)
    driver = BatchDriver(store, batch_id, "me", 30.0)
    await driver.start()
    await store.request_batch_cancel(batch_id)
    await asyncio.sleep(11)
    assert driver.cancel_requested
    work = asyncio.get_running_loop().create_future()
    driver.watch(work)
    assert work.cancelled()
    await driver.stop()


class SlowRenewal(FlakyStore):
    """A memory store whose renewals take ``renew_s`` seconds, and that remembers whether one was
    cut short."""

    renew_s = 0.0
    cut = 0
    renewed = 0

    async def renew_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float
    ) -> BatchRecord:
        try:
            await asyncio.sleep(self.renew_s)
        except asyncio.CancelledError:
            self.cut += 1
            raise
        self.renewed += 1
        return await super().renew_batch_driver(batch_id, driver, lease_seconds)


async def test_stopping_during_a_renewal_lets_it_finish_then_releases() -> None:
    # Cancelling a database call half way can leave its connection waiting forever (SQLAlchemy's
    # asyncio drivers): the stop waits for the renewal in flight instead.
    loop = asyncio.get_running_loop()
    store = SlowRenewal(clock=lambda: EPOCH + timedelta(seconds=loop.time()))
    store.renew_s = 2.0
    batch_id = await _batch(store)
    driver = BatchDriver(store, batch_id, "me", 30.0)
    await driver.start()
    await asyncio.sleep(11.0)  # the first renewal started at 10 s and lasts 2 s
    t0 = loop.time()
    await driver.stop()
    assert loop.time() - t0 == pytest.approx(1.0)
    assert (store.cut, store.renewed) == (0, 1)
    assert (await store.get_batch(batch_id)).driver is None
    await asyncio.sleep(30.0)
    assert store.renewed == 1  # no renewal after the stop


async def test_stopping_between_renewals_is_immediate() -> None:
    loop = asyncio.get_running_loop()
    store = SlowRenewal(clock=lambda: EPOCH + timedelta(seconds=loop.time()))
    batch_id = await _batch(store)
    driver = BatchDriver(store, batch_id, "me", 30.0)
    await driver.start()
    await asyncio.sleep(15.0)
    t0 = loop.time()
    await driver.stop()
    assert loop.time() - t0 == 0.0
    assert (store.cut, store.renewed) == (0, 1)
    assert (await store.get_batch(batch_id)).driver is None

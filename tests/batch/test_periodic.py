"""The repeated store write of a lease renewal: never cut in half by its stop (fake time)."""

from __future__ import annotations

import asyncio

import pytest

from dspex._periodic import Periodic
from dspex.batch.recorder import LeaseKeeper
from dspex.store import MemoryStore

pytestmark = pytest.mark.looptime


class Ticks:
    def __init__(self, seconds: float = 0.0, stop_after: int | None = None) -> None:
        self.seconds = seconds
        self.stop_after = stop_after
        self.started: list[float] = []
        self.ended = 0
        self.cut = 0

    async def __call__(self) -> bool:
        self.started.append(asyncio.get_running_loop().time())
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cut += 1
            raise
        self.ended += 1
        return self.stop_after is None or self.ended < self.stop_after


async def test_ticks_come_one_interval_after_the_last_one_ended() -> None:
    ticks = Ticks(seconds=1.0)
    periodic = Periodic(ticks, 10.0, "t")
    periodic.start()
    await asyncio.sleep(35.0)
    await periodic.stop()
    assert ticks.started == [10.0, 21.0, 32.0]
    assert (ticks.ended, ticks.cut) == (3, 0)


async def test_a_stop_while_asleep_is_at_once_and_a_stop_mid_tick_waits_for_it() -> None:
    loop = asyncio.get_running_loop()
    asleep = Periodic(Ticks(), 10.0, "asleep")
    asleep.start()
    await asyncio.sleep(5.0)
    t0 = loop.time()
    await asleep.stop()
    assert loop.time() == t0

    ticks = Ticks(seconds=4.0)
    busy = Periodic(ticks, 10.0, "busy")
    busy.start()
    await asyncio.sleep(11.0)  # its first tick runs from 15 s to 19 s
    await busy.stop()
    assert loop.time() == pytest.approx(19.0)
    assert (ticks.ended, ticks.cut) == (1, 0)
    await asyncio.sleep(50.0)
    assert len(ticks.started) == 1


async def test_a_tick_that_answers_false_ends_the_loop() -> None:
    ticks = Ticks(stop_after=2)
    periodic = Periodic(ticks, 1.0, "t")
    periodic.start()
    await asyncio.sleep(10.0)
    assert len(ticks.started) == 2
    await periodic.stop()  # already ended: nothing to wait for


async def test_a_stop_before_the_start_is_a_no_op() -> None:
    await Periodic(Ticks(), 1.0, "t").stop()


class SlowLeases(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.beats: list[str] = []
        self.cut = 0

    async def heartbeat_lease(self, token: str, lease_seconds: float) -> int:
        try:
            await asyncio.sleep(3.0)
        except asyncio.CancelledError:
            self.cut += 1
            raise
        self.beats.append(token)
        return 0


async def test_the_chunk_lease_keeper_lets_a_heartbeat_in_flight_finish() -> None:
    store = SlowLeases()
    keeper = LeaseKeeper(store, 30.0)
    keeper.hold("a", 2)
    keeper.hold("b", 1)
    keeper.start()
    await asyncio.sleep(11.0)  # beating "a" (10–13 s), then "b" (13–16 s)
    await keeper.stop()
    assert asyncio.get_running_loop().time() == pytest.approx(16.0)
    assert (store.beats, store.cut) == (["a", "b"], 0)

"""An optimization run's progress events and the heartbeat that keeps its lease."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dspex.actions._heartbeat import Heartbeat
from dspex.actions._optimize_progress import Counter, Progress, Stopped
from dspex.backends.base import Usage
from dspex.errors import LeaseLostError, StorageError
from dspex.records import OptimizationTrial


async def test_calls_events_report_the_counts_and_a_failing_callback_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, int, int]] = []

    def callback(event: object) -> None:
        phase = getattr(event, "phase", "")
        seen.append((phase, getattr(event, "program_calls", 0), getattr(event, "lm_calls", 0)))
        if phase == "baseline":
            raise RuntimeError("a subscriber broke")

    counter = Counter()
    progress = Progress("run-1", counter, callback, asyncio.get_running_loop(), calls_every=0)
    counter.on_lm(failed=False, usage={"m": Usage(prompt_tokens=3)})
    counter.on_lm(failed=True, usage={})
    with caplog.at_level(logging.ERROR, logger="dspex.optimize"):
        progress.emit("baseline", OptimizationTrial(0, 0.5, {"kind": "baseline"}))
    progress.emit("result")
    assert seen == [("calls", 0, 1), ("calls", 0, 2), ("baseline", 0, 2), ("result", 0, 2)]
    assert "progress callback raised" in caplog.text
    assert counter.stats()["failed_lm_calls"] == 1
    assert counter.stats()["usage"]["m"]["prompt_tokens"] == 3


async def test_events_from_another_thread_are_delivered_on_the_loop() -> None:
    loop = asyncio.get_running_loop()
    delivered = asyncio.Event()
    threads: list[bool] = []

    def callback(event: object) -> None:
        threads.append(asyncio.get_running_loop() is loop)
        delivered.set()

    progress = Progress("run-2", Counter(), callback, loop)
    await asyncio.to_thread(progress.emit, "compiling")
    await delivered.wait()
    assert threads == [True]


async def test_a_stopped_run_stops_its_thread_at_the_next_call() -> None:
    counter = Counter()
    progress = Progress("run-3", counter, None, asyncio.get_running_loop())
    progress.emit("started")  # no callback: nothing to deliver
    progress.check()
    progress.stopped.set()
    with pytest.raises(Stopped):
        counter.on_lm(failed=False, usage={})


async def test_the_heartbeat_beats_until_stopped_and_stops_when_the_lease_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    beats: list[int] = []
    third = asyncio.Event()

    async def beat() -> None:
        beats.append(len(beats) + 1)
        if len(beats) == 1:
            raise StorageError("the database blinked")  # logged; the beats go on
        if len(beats) == 3:
            third.set()

    with caplog.at_level(logging.WARNING, logger="dspex.execution"):
        heartbeat = Heartbeat(beat, 0.003, "optimization run-4")
        await third.wait()
        await heartbeat.stop()
    assert beats[:3] == [1, 2, 3]
    assert "heartbeat of optimization run-4 failed: the database blinked" in caplog.text

    lost = asyncio.Event()

    async def gone() -> None:
        lost.set()
        raise LeaseLostError("taken over")

    with caplog.at_level(logging.WARNING, logger="dspex.execution"):
        heartbeat = Heartbeat(gone, 0.003, "optimization run-5")
        await lost.wait()
        await heartbeat.stop()
    assert "optimization run-5 lost its lease" in caplog.text

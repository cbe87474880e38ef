"""A long execution's finished steps recorded while it runs, so any process can follow it.

An execution records its steps when it finishes (``store.finish_execution``). One of several
modules that runs longer than ``live_steps_seconds`` also records the steps it finished so far
(``store.record_steps``), at most once per that interval and only when there are new ones; its
finish then writes only the rest. A shorter run writes nothing more than before: the first
record waits for the interval to pass (a timer), and the finish cancels it. A one-module program
has nothing to record before its one step ends with the run, so it gets no recorder at all.

Steps are recorded in run order (the plan's order, the order of the run's result and of what
the store lists), so a step that ended before one earlier in that order waits for it. A
``dspy`` module's predictor calls (its child steps) and every step's backend attempts go with
their step. Knowing when a step ended is the engine's ``after_step`` hook, as for streaming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from dspex.engine.recording import run_records
from dspex.errors import DspexError, LeaseLostError

if TYPE_CHECKING:
    from dspex.backends.pricing import PriceTable
    from dspex.engine.results import StepResult
    from dspex.records import ExecutionRecord
    from dspex.store.base import Store

__all__ = ["LiveSteps"]

log = logging.getLogger("dspex.execution")


class LiveSteps:
    """Records a running execution's finished steps every ``interval`` seconds once it is that
    old (an engine hook: ``after_step``); :meth:`close` when the run ended, before finishing it.

    Args:
        store: where the execution is recorded.
        started: waits for the running execution's record (its id and lease token), which is
            written while the run begins.
        order: the modules in run order (the program plan's ``order``).
        interval: seconds from now before the first record, and between two records.
        prices: the engine's price table, so recorded steps carry their cost as at the finish.
    """

    __slots__ = (
        "_due",
        "_finished",
        "_interval",
        "_loop",
        "_order",
        "_prices",
        "_ready",
        "_recorded",
        "_started",
        "_stopped",
        "_store",
        "_task",
        "_timer",
    )

    def __init__(
        self,
        store: Store,
        started: Callable[[], Awaitable[ExecutionRecord]],
        order: Sequence[str],
        interval: float,
        prices: PriceTable | None,
    ) -> None:
        self._store = store
        self._started = started
        self._order = order
        self._interval = interval
        self._prices = prices
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + interval  # no record before this
        self._finished: dict[str, StepResult] = {}
        self._ready = 0  # how many modules of ``order``, from the first, have finished
        self._recorded = 0  # how many of them are recorded
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def recorded(self) -> int:
        """How many modules' steps (from the first, in run order) were recorded so far."""
        return self._recorded

    def after_step(self, *, run_id: str, step: StepResult) -> None:
        self._finished[step.name] = step
        order, finished = self._order, self._finished
        while self._ready < len(order) and order[self._ready] in finished:
            self._ready += 1
        self._schedule()

    async def close(self) -> None:
        """The run ended: record nothing more, and wait for a record in flight (so the finish
        that follows sees it)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await self._task

    def _wanted(self) -> bool:
        """Whether there are finished steps to record: new ones, while some module still runs
        (once every module ended, the finish that follows writes them)."""
        return not self._stopped and self._recorded < self._ready < len(self._order)

    def _schedule(self) -> None:
        """Record the new finished steps now, or when the interval allows (one at a time)."""
        if not self._wanted() or self._timer is not None or self._task is not None:
            return  # nothing to record, or a timer or a record in flight looks again
        if self._loop.time() >= self._due:
            self._start()
        else:
            self._timer = self._loop.call_at(self._due, self._start)

    def _start(self) -> None:
        self._timer = None
        if not self._wanted():
            return
        self._due = self._loop.time() + self._interval
        steps = [self._finished[name] for name in self._order[: self._ready]]
        self._task = self._loop.create_task(self._write(steps))

    async def _write(self, steps: list[StepResult]) -> None:
        try:
            record = await self._started()
        except DspexError:
            self._stopped = True  # not written: the run is being stopped
            self._task = None
            return
        try:
            base = record.started_at or record.created_at
            records = run_records(steps, base, self._prices)
            await self._store.record_steps(
                record.id, record.lease_token or "", records.steps, records.attempts
            )
            self._recorded = len(steps)
        except LeaseLostError:
            self._stopped = True  # another worker took it over: its finish will say so
        except DspexError as exc:  # tried again once another step ends (or the finish)
            log.warning("recording the steps of execution %s failed: %s", record.id, exc)
            return
        except Exception:
            self._stopped = True  # a bug: the finish still records every step
            log.exception("recording the steps of execution %s failed", record.id)
        finally:
            self._task = None
        self._schedule()  # steps that ended meanwhile

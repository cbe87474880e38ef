"""Progress of a running batch: one :class:`ProgressEvent` per finished item.

An event is emitted once an item's result is written to the store (never before), with the
running counts, the throughput since the batch (re)started and an estimate of the time left.
The CLI's progress bar and a Python ``on_progress`` callback receive the same events.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ProgressCallback", "ProgressEvent", "ProgressTracker"]

log = logging.getLogger("dspex.batch")

ProgressCallback = Callable[["ProgressEvent"], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Where a batch stands after one more item finished.

    Attributes:
        batch_id: the batch.
        index: the item that just finished (``None`` for a polled update from worker
            processes or a waiting update).
        status: how it ended: ``completed``, ``failed`` or ``cancelled`` (``None`` when polled).
        total: items in the batch.
        done: items finished so far (completed + failed + cancelled), earlier runs included.
        completed: items completed so far.
        failed: items failed so far.
        cancelled: items cancelled so far.
        elapsed_s: seconds since this run of the batch started.
        rate: items finished per second in this run.
        eta_s: estimated seconds until every item is finished (``None`` before any finished).
        held: items this run waits for because another worker's lease holds them (a resume
            right after a crash, before the dead worker's leases expired).
        held_expires_s: seconds until the last of those leases expires, unless renewed
            (``None`` when nothing is held).
        duration_ms: how long the item that just finished ran (``None`` when polled).
        spend: what the item that just finished used, one ``(module, model, prompt_tokens,
            completion_tokens, cost_usd)`` per module and model (empty when polled).
    """

    batch_id: str
    index: int | None
    status: str | None
    total: int
    done: int
    completed: int
    failed: int
    cancelled: int
    elapsed_s: float
    rate: float
    eta_s: float | None
    held: int = 0
    held_expires_s: float | None = None
    duration_ms: float | None = None
    spend: tuple[tuple[str, str, int, int, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view with the attribute names as keys."""
        return asdict(self)


class ProgressTracker:
    """Counts finished items and turns each into a :class:`ProgressEvent` for the callback.

    Args:
        batch_id: the batch.
        total: items in the batch.
        completed: items already completed before this run (resume).
        failed: items already failed before this run.
        cancelled: items already cancelled before this run.
        callback: receives every event; may be a coroutine function.
        clock: seconds, monotonic (injectable for tests).
    """

    def __init__(
        self,
        batch_id: str,
        total: int,
        *,
        completed: int = 0,
        failed: int = 0,
        cancelled: int = 0,
        callback: ProgressCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.batch_id = batch_id
        self.total = total
        self.completed = completed
        self.failed = failed
        self.cancelled = cancelled
        self.callback = callback
        self._clock = clock
        self._t0 = clock()
        self._run_done = 0
        self._warned = False
        self.held = 0
        self._held_expires_s: float | None = None

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.cancelled

    def _count(self, status: str, delta: int) -> None:
        if status == "completed":
            self.completed += delta
        elif status == "failed":
            self.failed += delta
        else:
            self.cancelled += delta

    def event(
        self,
        index: int | None,
        status: str | None,
        duration_ms: float | None = None,
        spend: tuple[tuple[str, str, int, int, float], ...] = (),
    ) -> ProgressEvent:
        """The current state as an event (after the item ``index`` ended with ``status``)."""
        elapsed = max(self._clock() - self._t0, 0.0)
        rate = self._run_done / elapsed if elapsed > 0 else 0.0
        remaining = max(self.total - self.done, 0)
        eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
        return ProgressEvent(
            batch_id=self.batch_id,
            index=index,
            status=status,
            total=self.total,
            done=self.done,
            completed=self.completed,
            failed=self.failed,
            cancelled=self.cancelled,
            elapsed_s=round(elapsed, 6),
            rate=round(rate, 3),
            eta_s=None if eta is None else round(eta, 3),
            held=self.held,
            held_expires_s=self._held_expires_s,
            duration_ms=duration_ms,
            spend=spend,
        )

    def count(self, status: str) -> None:
        """Count one finished item of this run without emitting (for when nobody listens)."""
        self._count(status, 1)
        self._run_done += 1

    async def finished(
        self,
        index: int,
        status: str,
        *,
        previous: str | None = None,
        duration_ms: float | None = None,
        spend: tuple[tuple[str, str, int, int, float], ...] = (),
    ) -> None:
        """Count one finished item (``previous``: its status from an earlier run) and emit."""
        if previous is not None:
            self._count(previous, -1)
        self._count(status, 1)
        self._run_done += 1
        if self.callback is not None:
            await self.emit(self.event(index, status, duration_ms, spend))

    async def waiting(self, held: int, expires_s: float | None) -> None:
        """Note the items held under another worker's lease that the run waits for, and emit."""
        self.held = held
        self._held_expires_s = None if expires_s is None else round(expires_s, 3)
        if self.callback is not None:
            await self.emit(self.event(None, None))

    async def set_counts(self, completed: int, failed: int, cancelled: int) -> None:
        """Replace the counts (polled from the store) and emit when they changed."""
        before = self.done
        self._run_done += completed + failed + cancelled - before
        self.completed, self.failed, self.cancelled = completed, failed, cancelled
        if self.callback is not None and self.done != before:
            await self.emit(self.event(None, None))

    async def emit(self, event: ProgressEvent) -> None:
        """Hand an event to the callback; a failing callback is logged once, never fatal."""
        assert self.callback is not None
        try:
            outcome = self.callback(event)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:
            if not self._warned:
                self._warned = True
                log.exception("the batch progress callback raised; later errors are ignored")

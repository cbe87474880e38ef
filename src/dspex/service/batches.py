"""Batches running in the background of the service: their tasks, progress and outcome.

Each submitted batch runs in a task (:meth:`dspex.Runtime.start_batch`, or
:meth:`dspex.Runtime.start_evaluation` for an evaluation, which is a batch with a metric); its
progress events feed Server-Sent-Event subscribers (:class:`~dspex.service.events.EventFeed`).
Cancelling the task cancels the batch (left ``cancelled`` and resumable). Finished batches keep
their statistics (and an evaluation its score) for ``GET /batches/{id}`` until
:data:`KEEP_FINISHED` newer ones finished.

Replicas (several services on one database): batches are submitted ``recoverable`` and run under
a driver lease; every replica checks every half lease (:meth:`BatchManager.take_over_loop`) for
batches whose driver died and resumes them here, tracked like the ones submitted here. A batch
another replica drives is streamed from the store (:func:`store_events`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dspex.errors import DspexError
from dspex.service.events import KEEP_EVENTS, EventFeed, sse

if TYPE_CHECKING:
    from dspex import BatchHandle, BatchInfo, BatchResult, EvaluationResult, ProgressEvent, Runtime
    from dspex.service.metrics import ServiceMetrics

Starter = Callable[[Callable[["ProgressEvent"], None]], Awaitable[Any]]

__all__ = ["KEEP_EVENTS", "KEEP_FINISHED", "POLL_S", "BatchManager", "BatchRun", "store_events"]

log = logging.getLogger("dspex.service")

KEEP_FINISHED = 256
POLL_S = 0.5
"""How often the events of a batch driven by another replica are read from the store."""


class BatchRun(EventFeed):
    """One batch (or evaluation) this process runs or ran."""

    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program
        self.total: int | None = None
        self.batch_id: str | None = None
        self.task: asyncio.Task[Any] | None = None
        self.done_count = 0
        self.result: BatchResult | EvaluationResult | None = None
        self.error: dict[str, str] | None = None
        self.cancel_asked = False

    def push(self, event: ProgressEvent) -> None:
        self.total = event.total
        self.done_count = event.done
        self.publish(event.to_dict())

    def finish(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            self.error = {"code": "cancelled", "message": "the batch was cancelled"}
        elif (exc := task.exception()) is not None:
            if isinstance(exc, DspexError):
                self.error = {"code": exc.code, "message": exc.message}
            else:
                log.error("batch %s failed", self.batch_id, exc_info=exc)
                self.error = {"code": "internal_error", "message": "the batch failed unexpectedly"}
        else:
            self.result = task.result()
        self.close()

    @property
    def stats(self) -> Any:
        """The batch's statistics once it finished here (``None`` before, or if it failed)."""
        return None if self.result is None else self.result.stats

    @property
    def remaining(self) -> int:
        return max((self.total or 0) - self.done_count, 0)

    def final_status(self) -> str:
        if self.result is not None:
            return str(self.result.status)
        if self.error is not None and self.error["code"] == "cancelled":
            return "cancelled"
        return "failed"


class BatchManager:
    """The batches of this process, by id.

    Args:
        metrics: counts each finished item.
        max_running: batches allowed to run at once (more are refused with 429).
    """

    def __init__(self, metrics: ServiceMetrics, *, max_running: int = 8) -> None:
        self.metrics = metrics
        self.max_running = max_running
        self._runs: OrderedDict[str, BatchRun] = OrderedDict()

    def get(self, batch_id: str) -> BatchRun | None:
        return self._runs.get(batch_id)

    @property
    def running(self) -> list[BatchRun]:
        return [run for run in self._runs.values() if not run.finished]

    def queue_depth(self) -> int:
        """Items of running batches not finished yet."""
        return sum(run.remaining for run in self.running)

    async def start(self, program: str, starter: Starter) -> BatchRun:
        """Start a batch with ``starter(on_progress)`` (returning a handle with the
        ``batch_id`` and the ``task``: a :class:`~dspex.BatchHandle` or an
        :class:`~dspex.EvaluationHandle`) and track it.

        Raises:
            whatever ``starter`` raises before the batch runs.
        """
        run = BatchRun(program=program)
        self._track(run, await starter(self._progress(run)))
        return run

    async def take_over(self, runtime: Runtime) -> BatchRun | None:
        """Resume here one batch whose driver (another replica, or this one before a restart)
        died, if there is one (:meth:`dspex.Runtime.take_over_batch`)."""
        run = BatchRun(program="")
        handle = await runtime.take_over_batch(on_progress=self._progress(run))
        if handle is None:
            return None
        run.program = handle.program
        self._track(run, handle)
        log.info("took over batch %s (%s)", handle.batch_id, handle.program)
        return run

    async def take_over_loop(self, runtime: Runtime, interval: float) -> None:
        """Every ``interval`` seconds, take over the batches whose driver died, as many as
        the room for running batches allows. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                while len(self.running) < self.max_running:
                    if await self.take_over(runtime) is None:
                        break
            except DspexError as exc:
                log.warning("taking over a batch failed: %s", exc)
            except Exception:
                log.exception("taking over a batch failed")

    def _progress(self, run: BatchRun) -> Callable[[ProgressEvent], None]:
        def on_progress(event: ProgressEvent) -> None:
            run.push(event)
            if event.index is not None and event.status is not None:
                program = run.program
                self.metrics.count_execution(program, event.status, event.duration_ms)
                for module, model, prompt, completion, cost in event.spend:
                    self.metrics.count_spend(program, module, model, prompt + completion, cost)

        return on_progress

    def _track(self, run: BatchRun, handle: BatchHandle) -> None:
        run.batch_id = handle.batch_id
        run.task = handle.task
        self._runs[handle.batch_id] = run
        self._runs.move_to_end(handle.batch_id)
        handle.task.add_done_callback(lambda task: self._finished(run, task))

    def _finished(self, run: BatchRun, task: asyncio.Task[Any]) -> None:
        run.finish(task)
        finished = [key for key, r in self._runs.items() if r.finished]
        for key in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
            del self._runs[key]

    def events(self, run: BatchRun) -> AsyncIterator[str]:
        """Server-Sent Events: every kept progress event, each new one, then ``done``."""
        return run.stream(lambda: self.summary(run))

    def summary(self, run: BatchRun) -> dict[str, Any]:
        """The ``done`` event: the final status, statistics and error, if any; an
        evaluation's also its score (``evaluation``)."""
        stats = run.stats
        done: dict[str, Any] = {
            "batch_id": run.batch_id,
            "status": run.final_status(),
            "stats": stats.model_dump(mode="json") if stats is not None else None,
            "error": run.error,
        }
        if run.result is not None and hasattr(run.result, "evaluation_id"):
            done["evaluation"] = run.result.model_dump(mode="json", exclude={"stats"})
        return done

    def cancel(self, run: BatchRun) -> None:
        """Cancel a batch running here at a client's request (it stays ``cancelled``)."""
        assert run.task is not None
        run.cancel_asked = True
        run.task.cancel()

    async def shutdown(self, hand_over: Callable[[str], Awaitable[object]] | None = None) -> None:
        """Cancel every running batch (each is left ``cancelled``, resumable) and wait; then
        ``hand_over(batch_id)`` each that no client asked to cancel, so that another replica
        (or this service, restarted) takes it over."""
        runs = [run for run in self.running if run.task is not None]
        tasks = [run.task for run in runs if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hand_over is None:
            return
        for run in runs:
            if run.cancel_asked or run.batch_id is None:
                continue
            try:
                await hand_over(run.batch_id)
            except DspexError as exc:
                log.warning("batch %s could not be handed over: %s", run.batch_id, exc)


async def store_events(runtime: Runtime, info: BatchInfo) -> AsyncIterator[str]:
    """Server-Sent Events of a batch this process does not drive, read from the store every
    :data:`POLL_S` seconds: a ``progress`` event (``index`` ``None``: polled) whenever its
    counts changed, then ``done`` once it finished (statistics are the driver's: ``null``). A
    batch already finished has only its ``done`` event."""
    started = time.monotonic()
    first = info.completed + info.failed + info.cancelled
    seen: tuple[int, int, int] | None = None
    sequence = 0
    while True:
        counts = (info.completed, info.failed, info.cancelled)
        if counts != seen and (sequence or info.status not in _FINISHED):
            seen = counts
            sequence += 1
            yield sse("progress", _polled(info, first, time.monotonic() - started), sequence)
        if info.status in _FINISHED:
            data = {"batch_id": info.batch_id, "status": info.status, "stats": None, "error": None}
            yield sse("done", data, sequence + 1)
            return
        await asyncio.sleep(POLL_S)
        info = await runtime.get_batch(info.batch_id)


_FINISHED = frozenset({"completed", "failed", "cancelled"})


def _polled(info: BatchInfo, first: int, elapsed: float) -> dict[str, Any]:
    """A polled progress event's data."""
    from dspex import ProgressEvent

    done = info.completed + info.failed + info.cancelled
    rate = (done - first) / elapsed if elapsed > 0 else 0.0
    event = ProgressEvent(
        batch_id=info.batch_id,
        index=None,
        status=None,
        total=info.total,
        done=done,
        completed=info.completed,
        failed=info.failed,
        cancelled=info.cancelled,
        elapsed_s=elapsed,
        rate=rate,
        eta_s=info.remaining / rate if rate > 0 else None,
    )
    return event.to_dict()

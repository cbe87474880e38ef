"""Batches running in the background of the service: their tasks, progress and outcome.

Each submitted batch runs in a task (:meth:`dspex.Runtime.start_batch`); its progress events are
kept (the most recent :data:`KEEP_EVENTS`) for Server-Sent-Event subscribers, who receive every
kept event and then each new one as it happens, and a final ``done`` event. Cancelling the task
cancels the batch (left ``cancelled`` and resumable). Finished batches keep their statistics for
``GET /batches/{id}`` until :data:`KEEP_FINISHED` newer ones finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dspex.errors import DspexError

if TYPE_CHECKING:
    from dspex import BatchHandle, BatchResult, ProgressEvent
    from dspex.service.metrics import ServiceMetrics

Starter = Callable[[Callable[["ProgressEvent"], None]], Awaitable["BatchHandle"]]

__all__ = ["KEEP_EVENTS", "KEEP_FINISHED", "BatchManager", "BatchRun"]

log = logging.getLogger("dspex.service")

KEEP_EVENTS = 1024
KEEP_FINISHED = 256


@dataclass(slots=True)
class BatchRun:
    """One batch this process runs or ran."""

    program: str
    total: int | None = None
    batch_id: str | None = None
    task: asyncio.Task[BatchResult] | None = None
    events: deque[tuple[int, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=KEEP_EVENTS)
    )
    sequence: int = 0
    done_count: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    result: BatchResult | None = None
    error: dict[str, str] | None = None

    def push(self, event: ProgressEvent) -> None:
        self.sequence += 1
        self.total = event.total
        self.done_count = event.done
        self.events.append((self.sequence, event.to_dict()))
        self._wake()

    def finish(self, task: asyncio.Task[BatchResult]) -> None:
        self.finished = True
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
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

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

    async def start(
        self,
        program: str,
        starter: Callable[[Callable[[ProgressEvent], None]], Awaitable[BatchHandle]],
    ) -> BatchRun:
        """Start a batch with ``starter(on_progress)`` and track it.

        Raises:
            whatever ``starter`` raises before the batch runs.
        """
        run = BatchRun(program=program)

        def on_progress(event: ProgressEvent) -> None:
            run.push(event)
            if event.index is not None and event.status is not None:
                self.metrics.count_execution(program, event.status, event.duration_ms)
                for module, model, prompt, completion, cost in event.spend:
                    self.metrics.count_spend(program, module, model, prompt + completion, cost)

        handle = await starter(on_progress)
        run.batch_id = handle.batch_id
        run.task = handle.task
        self._runs[handle.batch_id] = run
        self._runs.move_to_end(handle.batch_id)
        handle.task.add_done_callback(lambda task: self._finished(run, task))
        return run

    def _finished(self, run: BatchRun, task: asyncio.Task[BatchResult]) -> None:
        run.finish(task)
        finished = [key for key, r in self._runs.items() if r.finished]
        for key in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
            del self._runs[key]

    async def events(self, run: BatchRun) -> AsyncIterator[str]:
        """Server-Sent Events: every kept progress event, each new one, then ``done``."""
        seen = 0
        while True:
            waiter = run.changed
            for sequence, data in list(run.events):
                if sequence > seen:
                    seen = sequence
                    yield _sse("progress", data, sequence)
            if run.finished:
                yield _sse("done", self.summary(run), seen + 1)
                return
            await waiter.wait()

    def summary(self, run: BatchRun) -> dict[str, Any]:
        """The ``done`` event: the final status, statistics and error, if any."""
        stats = run.result.stats.model_dump(mode="json") if run.result is not None else None
        return {
            "batch_id": run.batch_id,
            "status": run.final_status(),
            "stats": stats,
            "error": run.error,
        }

    async def shutdown(self) -> None:
        """Cancel every running batch (each is left ``cancelled``, resumable) and wait."""
        tasks = [run.task for run in self.running if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _sse(event: str, data: dict[str, Any], sequence: int) -> str:
    return f"id: {sequence}\nevent: {event}\ndata: {json.dumps(data, default=str)}\n\n"

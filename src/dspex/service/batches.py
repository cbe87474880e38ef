"""Batches running in the background of the service: their tasks, progress and outcome.

Each submitted batch runs in a task (:meth:`dspex.Runtime.start_batch`, or
:meth:`dspex.Runtime.start_evaluation` for an evaluation, which is a batch with a metric); its
progress events feed Server-Sent-Event subscribers (:class:`~dspex.service.events.EventFeed`).
Cancelling the task cancels the batch (left ``cancelled`` and resumable). Finished batches keep
their statistics (and an evaluation its score) for ``GET /batches/{id}`` until
:data:`KEEP_FINISHED` newer ones finished.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dspex.errors import DspexError
from dspex.service.events import KEEP_EVENTS, EventFeed

if TYPE_CHECKING:
    from dspex import BatchResult, EvaluationResult, ProgressEvent
    from dspex.service.metrics import ServiceMetrics

Starter = Callable[[Callable[["ProgressEvent"], None]], Awaitable[Any]]

__all__ = ["KEEP_EVENTS", "KEEP_FINISHED", "BatchManager", "BatchRun"]

log = logging.getLogger("dspex.service")

KEEP_FINISHED = 256


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

    async def shutdown(self) -> None:
        """Cancel every running batch (each is left ``cancelled``, resumable) and wait."""
        tasks = [run.task for run in self.running if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

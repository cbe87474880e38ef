"""Optimization runs in the background of the service: their tasks, progress and outcome.

Each started (or resumed) run goes in a task (:meth:`dspex.Runtime.start_optimization`); its
progress events (:class:`~dspex.OptimizationEvent`) feed Server-Sent-Event subscribers
(:class:`~dspex.service.events.EventFeed`). Cancelling the task leaves the run ``interrupted``
(resumable). Finished runs are forgotten here once :data:`KEEP_FINISHED` newer ones finished
(their records stay in the store).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dspex.errors import DspexError
from dspex.service.events import EventFeed

if TYPE_CHECKING:
    from dspex import OptimizationEvent, OptimizationHandle, OptimizationInfo

__all__ = ["KEEP_FINISHED", "OptimizationManager", "OptimizationRun"]

log = logging.getLogger("dspex.service")

KEEP_FINISHED = 64

Starter = Callable[[Callable[["OptimizationEvent"], None]], Awaitable["OptimizationHandle"]]


class OptimizationRun(EventFeed):
    """One optimization run this process runs or ran."""

    def __init__(self, program: str | None) -> None:
        super().__init__()
        self.program = program
        self.optimization_id: str | None = None
        self.task: asyncio.Task[OptimizationInfo] | None = None
        self.result: OptimizationInfo | None = None
        self.error: dict[str, str] | None = None

    def push(self, event: OptimizationEvent) -> None:
        self.publish(event.to_dict())

    def finish(self, task: asyncio.Task[OptimizationInfo]) -> None:
        if task.cancelled():
            self.error = {"code": "cancelled", "message": "the optimization was cancelled"}
        elif (exc := task.exception()) is not None:
            if isinstance(exc, DspexError):
                self.error = {"code": exc.code, "message": exc.message}
            else:  # pragma: no cover - the action turns every failure into a DspexError
                log.error("optimization %s failed", self.optimization_id, exc_info=exc)
                self.error = {"code": "internal_error", "message": "the run failed unexpectedly"}
        else:
            self.result = task.result()
        self.close()

    def summary(self) -> dict[str, Any]:
        """The ``done`` event: the final status, the version made and its scores, or the
        error."""
        result = self.result
        if result is not None:
            status = result.status.value
        else:
            status = "interrupted" if self.error and self.error["code"] == "cancelled" else "failed"
        return {
            "optimization_id": self.optimization_id,
            "status": status,
            "version": result.version if result is not None else None,
            "baseline_score": result.baseline_score if result is not None else None,
            "score": result.score if result is not None else None,
            "error": self.error,
        }


class OptimizationManager:
    """The optimization runs of this process, by id.

    Args:
        max_running: runs allowed at once (more are refused with 429): each keeps a thread
            and the LMs busy.
    """

    def __init__(self, *, max_running: int = 2) -> None:
        self.max_running = max_running
        self._runs: OrderedDict[str, OptimizationRun] = OrderedDict()

    def get(self, optimization_id: str) -> OptimizationRun | None:
        return self._runs.get(optimization_id)

    @property
    def running(self) -> list[OptimizationRun]:
        return [run for run in self._runs.values() if not run.finished]

    async def start(self, program: str | None, starter: Starter) -> OptimizationRun:
        """Start a run with ``starter(on_progress)`` and track it.

        Raises:
            whatever ``starter`` raises before the run is recorded.
        """
        run = OptimizationRun(program)
        handle = await starter(run.push)
        run.optimization_id = handle.optimization_id
        run.task = handle.task
        self._runs[handle.optimization_id] = run
        self._runs.move_to_end(handle.optimization_id)
        handle.task.add_done_callback(lambda task: self._finished(run, task))
        return run

    def _finished(self, run: OptimizationRun, task: asyncio.Task[OptimizationInfo]) -> None:
        run.finish(task)
        finished = [key for key, r in self._runs.items() if r.finished]
        for key in finished[: max(len(finished) - KEEP_FINISHED, 0)]:
            del self._runs[key]

    def events(self, run: OptimizationRun) -> AsyncIterator[str]:
        """Server-Sent Events: every kept progress event, each new one, then ``done``."""
        return run.stream(run.summary)

    async def shutdown(self) -> None:
        """Cancel every running optimization (each is left ``interrupted``) and wait."""
        tasks = [run.task for run in self.running if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

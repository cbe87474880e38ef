"""The heartbeat that keeps a lease alive while its holder works (executions, optimization
runs)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from dspex.errors import ExecutionCancelledError, LeaseLostError, StorageError

__all__ = ["Heartbeat"]

log = logging.getLogger("dspex.execution")


class Heartbeat:
    """Keeps a lease alive while the work goes on: ``beat()`` every ``lease / 3`` seconds.

    ``beat`` renews the lease in the store and raises :class:`LeaseLostError` when the lease is
    no longer the holder's (the beats stop: its outcome will be refused), or
    :class:`ExecutionCancelledError` when a cancel was asked for from anywhere: the beats stop
    and ``on_cancel`` is called (unless the work already ended). The first beat is a
    timer, not a task, so work shorter than a third of the lease (the usual execution) costs one
    timer and no task at all. Beats run on the event loop independently of the work.
    """

    __slots__ = (
        "_beat",
        "_beating",
        "_handle",
        "_interval",
        "_on_cancel",
        "_stopped",
        "_task",
        "_what",
    )

    def __init__(
        self,
        beat: Callable[[], Awaitable[object]],
        lease_seconds: float,
        what: str,
        on_cancel: Callable[[], object] | None = None,
    ) -> None:
        self._beat = beat
        self._on_cancel = on_cancel
        self._what = what
        self._interval = lease_seconds / 3.0
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._beating = False
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self._interval, self._start)

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while not self._stopped:
            self._beating = True
            try:
                await self._beat()
            except LeaseLostError:
                log.warning("%s lost its lease; its result will be refused", self._what)
                return
            except ExecutionCancelledError:
                if not self._stopped and self._on_cancel is not None:
                    log.info("%s was asked to cancel; cancelling it", self._what)
                    self._on_cancel()
                return
            except StorageError as exc:
                log.warning("heartbeat of %s failed: %s", self._what, exc)
            finally:
                self._beating = False
            if self._stopped:
                return
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        self._stopped = True
        self._handle.cancel()
        task = self._task
        if task is None or task.done():
            return
        if not self._beating:
            task.cancel()
        # A beat in flight finishes (never cut a write in half); a sleeping loop is cancelled.
        await asyncio.gather(task, return_exceptions=True)

"""The heartbeat that keeps a lease alive while its holder works (executions, optimization
runs)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from dspex._periodic import Periodic
from dspex.errors import ExecutionCancelledError, LeaseLostError, StorageError

__all__ = ["Heartbeat"]

log = logging.getLogger("dspex.execution")


class Heartbeat:
    """Keeps a lease alive while the work goes on: ``beat()`` every ``lease / 3`` seconds.

    ``beat`` renews the lease in the store and raises :class:`LeaseLostError` when the lease is
    no longer the holder's (the beats stop: its outcome will be refused), or
    :class:`ExecutionCancelledError` when a cancel was asked for from anywhere: the beats stop
    and ``on_cancel`` is called (unless the work already ended). A :class:`StorageError` is
    logged and the beats go on. The beats run on the event loop independently of the work, as a
    :class:`~dspex._periodic.Periodic`: the first is a timer, and stopping never cuts a beat in
    half.
    """

    __slots__ = ("_beat", "_on_cancel", "_periodic", "_what")

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
        self._periodic = Periodic(self._once, lease_seconds / 3.0, f"heartbeat of {what}")
        self._periodic.start()

    async def _once(self) -> bool:
        try:
            await self._beat()
        except LeaseLostError:
            log.warning("%s lost its lease; its result will be refused", self._what)
            return False
        except ExecutionCancelledError:
            if not self._periodic.stopping and self._on_cancel is not None:
                log.info("%s was asked to cancel; cancelling it", self._what)
                self._on_cancel()
            return False
        except StorageError as exc:
            log.warning("heartbeat of %s failed: %s", self._what, exc)
        return True

    async def stop(self) -> None:
        """Stop beating (a beat in flight finishes first)."""
        await self._periodic.stop()

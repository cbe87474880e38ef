"""A store write repeated every few seconds (a lease renewal, a heartbeat) whose stop never cuts
one in half.

Cancelling a task in the middle of a database call can leave the connection it was using waiting
for an answer that never comes (a known hazard of cancelling SQLAlchemy's asyncio drivers
mid-statement, aiosqlite and asyncpg alike): the next statement on that connection then waits
forever. So :meth:`Periodic.stop` cancels the loop only while it waits; a call in flight finishes
first, and the loop ends after it. The first call is a timer, not a task: work that ends sooner
than one interval (the usual execution) costs one timer and no task at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["Periodic"]


class Periodic:
    """Calls ``tick`` every ``interval`` seconds (the first after one interval) until
    :meth:`stop`, or until ``tick`` returns ``False``.

    Args:
        tick: one round of the work (its exceptions end the loop: handle the expected ones).
        interval: seconds between the end of one call and the start of the next.
        name: the task's name.
    """

    __slots__ = ("_handle", "_interval", "_name", "_stopping", "_task", "_tick", "_ticking")

    def __init__(
        self, tick: Callable[[], Awaitable[bool | None]], interval: float, name: str
    ) -> None:
        self._tick = tick
        self._interval = interval
        self._name = name
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ticking = False

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self._interval, self._begin)

    def _begin(self) -> None:
        self._handle = None
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)

    async def _run(self) -> None:
        while True:
            self._ticking = True  # no await before: stop() sees one state or the other
            try:
                go_on = await self._tick()
            finally:
                self._ticking = False
            if go_on is False or self._stopping:
                return
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        """End the loop: at once while it waits, after the call in flight otherwise."""
        self._stopping = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        if task is None or task.done():
            return
        if not self._ticking:
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

"""Group writes of finished batch items, and the leases of claimed chunks.

:class:`Recorder` collects :class:`~dspex.records.FinishRequest` objects from the workers and
writes them with :meth:`~dspex.store.Store.finish_executions` in small groups — every
``interval`` seconds or ``size`` items, whichever comes first — instead of one transaction per
item. An item counts as done only once its group is written. :class:`LeaseKeeper` keeps one lease
per claimed chunk alive with :meth:`~dspex.store.Store.heartbeat_lease` until every item of the
chunk is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from dspex._periodic import Periodic
from dspex.errors import StorageError

if TYPE_CHECKING:
    from dspex.records import FinishRequest
    from dspex.store.base import Store

__all__ = ["LeaseKeeper", "Recorder"]

log = logging.getLogger("dspex.batch")

M = TypeVar("M")
Written = Callable[[Sequence[tuple["FinishRequest", M, bool]]], Awaitable[None]]


class Recorder(Generic[M]):
    """Writes finish requests in groups and reports each written group to ``on_written``.

    Args:
        store: where to write.
        on_written: receives ``(request, meta, written)`` for every request of a group once the
            group is committed (``written`` is ``False`` when the lease was lost).
        interval: the longest a request waits for its group, in seconds.
        size: a group this large is written at once.
        high_water: :meth:`room` waits while this many requests are waiting (back-pressure).
    """

    def __init__(
        self,
        store: Store,
        on_written: Written[M],
        *,
        interval: float = 0.02,
        size: int = 200,
        high_water: int = 2000,
    ) -> None:
        self._store = store
        self._on_written = on_written
        self._interval = interval
        self._size = size
        self._high_water = high_water
        self._pending: list[tuple[FinishRequest, M]] = []
        self._has = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._eager = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-recorder")
        return self._task

    def add(self, request: FinishRequest, meta: M) -> None:
        """Queue one request (never blocks; see :meth:`room`)."""
        self._pending.append((request, meta))
        self._has.set()
        if len(self._pending) >= self._size:
            self._full.set()
        if len(self._pending) >= self._high_water:
            self._room.clear()

    def hurry(self) -> None:
        """From now on write each group as soon as the one before is written, without waiting
        ``interval`` for it to fill: the run is ending (nothing more to start), and the last
        results should not wait for company that is not coming."""
        self._eager = True
        self._full.set()

    @property
    def has_room(self) -> bool:
        """Whether the queue of unwritten requests is below the high-water mark."""
        return self._room.is_set()

    async def room(self) -> None:
        """Wait until the queue of unwritten requests is below the high-water mark."""
        await self._room.wait()

    async def _run(self) -> None:
        while True:
            await self._has.wait()
            if not (self._closing or self._eager) and len(self._pending) < self._size:
                try:
                    async with asyncio.timeout(self._interval):
                        await self._full.wait()
                except TimeoutError:
                    pass
            group, self._pending = self._pending, []
            self._has.clear()
            self._full.clear()
            if group:
                written = await self._store.finish_executions([r for r, _ in group])
                await self._on_written(
                    [(r, m, ok) for (r, m), ok in zip(group, written, strict=True)]
                )
            if len(self._pending) < self._high_water:
                self._room.set()
            if self._closing and not self._pending:
                return

    async def close(self) -> None:
        """Write everything queued and stop (safe to call when the task already ended)."""
        self._closing = True
        self._has.set()
        self._full.set()
        task = self._task
        if task is None:
            return
        if not task.done():
            await asyncio.shield(task)
        elif not task.cancelled() and task.exception() is None and self._pending:
            # the loop ended before these arrived: write them now
            group, self._pending = self._pending, []
            written = await self._store.finish_executions([r for r, _ in group])
            await self._on_written([(r, m, ok) for (r, m), ok in zip(group, written, strict=True)])


class LeaseKeeper:
    """Heartbeats every chunk lease that still has unwritten items, every ``lease / 3`` s."""

    def __init__(self, store: Store, lease_seconds: float) -> None:
        self._store = store
        self._lease = lease_seconds
        self._outstanding: dict[str, int] = {}
        self._renewal = Periodic(self._beat, lease_seconds / 3.0, "batch-leases")

    def start(self) -> None:
        self._renewal.start()

    def hold(self, token: str, items: int) -> None:
        """A chunk of ``items`` was claimed under ``token``."""
        if items > 0:
            self._outstanding[token] = self._outstanding.get(token, 0) + items

    def release(self, token: str) -> None:
        """One item of the chunk under ``token`` was written."""
        left = self._outstanding.get(token, 0) - 1
        if left > 0:
            self._outstanding[token] = left
        else:
            self._outstanding.pop(token, None)

    async def _beat(self) -> None:
        for token in list(self._outstanding):
            try:
                await self._store.heartbeat_lease(token, self._lease)
            except StorageError as exc:
                log.warning("heartbeat of a batch chunk lease failed: %s", exc)

    async def stop(self) -> None:
        """Stop the heartbeats (one in flight finishes first)."""
        await self._renewal.stop()

"""A Ray actor of a batch: a warmed runtime and one runner fed chunks by the driver.

The driver (:mod:`dspex.batch.ray_actors`) makes this class a Ray actor; nothing here imports
Ray. :meth:`BatchActor.start` builds the actor's runtime — its own store connection, engine and
backends — once, prepares the program and starts one
:class:`~dspex.batch.runner.BatchRunner` whose input is the chunks :meth:`BatchActor.feed`
hands it (a few ahead of what runs: ``feed`` returns only once there is room, which is the
driver's backpressure). The runner claims each chunk's items with leases and records their
results itself, as in a worker process. :meth:`BatchActor.finish` ends the input and returns
the runner's outcome once it is done; :meth:`BatchActor.stop` cancels it (its running items
are recorded ``cancelled``, so the batch is resumable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dspex.batch._worker import outcome_of, worker_runner

if TYPE_CHECKING:
    from dspex.batch.inputs import RawItem
    from dspex.batch.runner import BatchRunner
    from dspex.batch.workers import WorkerSpec

__all__ = ["AHEAD_CHUNKS", "BatchActor"]

AHEAD_CHUNKS = 2
"""Chunks an actor holds beyond the one its runner reads: ``feed`` waits past that."""


class BatchActor:
    """One actor's share of a batch (see the module docstring).

    Args:
        spec: the batch, its options (with this actor's share of the concurrency, rate limits
            and what is left of the deadline), settings and backends.
        name: ends this actor's lease identity (who holds an item is read off the item).
    """

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        self._pending: deque[list[RawItem]] = deque()
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._closed = False
        self._stopped = False
        self._opened: contextlib.AbstractAsyncContextManager[BatchRunner] | None = None
        self._runner: BatchRunner | None = None
        self._task: asyncio.Task[Any] | None = None

    async def start(self) -> float:
        """Build the runtime, prepare the program and start the runner; the seconds it took."""
        started = time.perf_counter()
        opened = worker_runner(self.spec, self._items(), self.name)
        self._runner = await opened.__aenter__()
        self._opened = opened
        self._task = asyncio.create_task(self._runner.run())
        if self._stopped:  # stopped while the runtime was being built
            self._task.cancel()
        return time.perf_counter() - started

    async def feed(self, items: list[RawItem]) -> bool:
        """Queue a chunk of items once there is room; ``False`` when the actor is stopping
        (the chunk was not taken)."""
        while len(self._pending) >= AHEAD_CHUNKS and not self._ending():
            self._room.clear()
            await self._room.wait()
        if self._ending():
            return False
        self._pending.append(items)
        self._more.set()
        return True

    async def finish(self) -> dict[str, Any]:
        """No more input: wait for the runner to finish; its outcome."""
        self._closed = True
        self._more.set()
        assert self._task is not None
        assert self._runner is not None
        await asyncio.wait({self._task})
        outcome = outcome_of(self.spec.number, self._task, self._runner)
        if self._opened is not None:
            opened, self._opened = self._opened, None
            await opened.__aexit__(None, None, None)
        return outcome

    def stop(self) -> None:
        """Stop: no more chunks, the running items are cancelled and recorded so."""
        self._stopped = self._closed = True
        self._room.set()
        self._more.set()
        task = self._task
        # A runner ending on its own (max_errors, deadline, max_cost) records what it holds;
        # a cancel then, or a second one, would cut that short.
        ending = self._runner is not None and self._runner.ending
        if task is not None and not task.done() and not task.cancelling() and not ending:
            task.cancel()

    def _ending(self) -> bool:
        return self._stopped or (self._task is not None and self._task.done())

    async def _items(self) -> AsyncIterator[RawItem]:
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._more.clear()
                await self._more.wait()
            chunk = self._pending.popleft()
            self._room.set()
            for raw in chunk:
                yield raw

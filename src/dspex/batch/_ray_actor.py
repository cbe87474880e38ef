"""A Ray actor of batches: a warmed runtime, and one runner per batch fed chunks by the driver.

The driver (:mod:`dspex.batch.ray_actors`) makes this class a Ray actor; nothing here imports
Ray. The actor builds its runtime — its own store connection, engine and backends — once, on
its first :meth:`BatchActor.begin`, and keeps it for every later batch its pool gives it (the
store, settings and backends are the actor's: a pool only reuses an actor for a batch that
has the same). Each :meth:`BatchActor.begin` prepares that batch's program (once per program
version: the runtime's program cache and engine keep what they built) and starts one
:class:`~dspex.batch.runner.BatchRunner` whose input is the chunks :meth:`BatchActor.feed`
hands it (a few ahead of what runs: ``feed`` returns only once there is room, which is the
driver's backpressure). The runner claims each chunk's items with leases and records their
results itself, as in a worker process. :meth:`BatchActor.finish` ends the input and returns
the runner's outcome once it is done; :meth:`BatchActor.stop` cancels it (its running items
are recorded ``cancelled``, so the batch is resumable). :meth:`BatchActor.close` closes the
runtime before the pool ends the actor.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dspex.batch._worker import batch_runner, outcome_of, worker_runtime

if TYPE_CHECKING:
    from dspex.batch.inputs import RawItem
    from dspex.batch.runner import BatchRunner
    from dspex.batch.workers import WorkerSpec
    from dspex.runtime import Runtime

__all__ = ["AHEAD_CHUNKS", "BatchActor"]

AHEAD_CHUNKS = 2
"""Chunks an actor holds beyond the one its runner reads: ``feed`` waits past that."""


class _Run:
    """One batch on an actor: its spec, the chunks waiting, its runner."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.pending: deque[list[RawItem]] = deque()
        self.more = asyncio.Event()
        self.room = asyncio.Event()
        self.closed = False
        self.stopped = False
        self.runner: BatchRunner | None = None
        self.task: asyncio.Task[Any] | None = None

    def ending(self) -> bool:
        return self.stopped or (self.task is not None and self.task.done())

    async def items(self) -> AsyncIterator[RawItem]:
        while True:
            while not self.pending:
                if self.closed:
                    return
                self.more.clear()
                await self.more.wait()
            chunk = self.pending.popleft()
            self.room.set()
            for raw in chunk:
                yield raw


class BatchActor:
    """An actor running its pool's batches one after another (see the module docstring).

    Args:
        spec: what the actor's runtime is built from (the database, settings and backends; the
            batch in it is not run until :meth:`begin` is given it).
        name: ends this actor's lease identity (who holds an item is read off the item).
    """

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        self.spec = spec
        self.name = name
        self._runtime: Runtime | None = None
        self._run: _Run | None = None

    def ping(self) -> int:
        """This actor's process id (the pool asks before it lends a kept actor again)."""
        return os.getpid()

    async def begin(self, spec: WorkerSpec) -> dict[str, Any]:
        """Start a batch: build the runtime (the first time only), prepare the program and
        start the runner; the seconds it took and the actor's process id."""
        started = time.perf_counter()
        run = self._run = _Run(spec)
        if self._runtime is None:
            runtime = worker_runtime(self.spec)
            await runtime.start()
            self._runtime = runtime
        run.runner = await batch_runner(self._runtime, spec, run.items(), self.name)
        run.task = asyncio.create_task(run.runner.run())
        if run.stopped:  # stopped while the runtime was being built
            run.task.cancel()
        return {"seconds": time.perf_counter() - started, "pid": os.getpid()}

    async def feed(self, items: list[RawItem]) -> bool:
        """Queue a chunk of items once there is room; ``False`` when the batch is stopping
        (the chunk was not taken)."""
        run = self._run
        if run is None:
            return False
        while len(run.pending) >= AHEAD_CHUNKS and not run.ending():
            run.room.clear()
            await run.room.wait()
        if run.ending():
            return False
        run.pending.append(items)
        run.more.set()
        return True

    async def finish(self) -> dict[str, Any]:
        """No more input: wait for the runner to finish; its outcome."""
        run = self._run
        assert run is not None
        run.closed = True
        run.more.set()
        assert run.task is not None
        assert run.runner is not None
        await asyncio.wait({run.task})
        return outcome_of(run.spec.number, run.task, run.runner)

    def stop(self) -> None:
        """Stop the batch: no more chunks, the running items are cancelled and recorded so."""
        run = self._run
        if run is None:
            return
        run.stopped = run.closed = True
        run.room.set()
        run.more.set()
        task = run.task
        # A runner ending on its own (max_errors, deadline, max_cost) records what it holds;
        # a cancel then, or a second one, would cut that short.
        ending = run.runner is not None and run.runner.ending
        if task is not None and not task.done() and not task.cancelling() and not ending:
            task.cancel()

    async def close(self) -> None:
        """Stop the batch running, if one is, and close the runtime (store connections,
        backends): the pool ends the actor next."""
        run = self._run
        if run is not None and run.task is not None:
            self.stop()
            await asyncio.wait({run.task})
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            await runtime.aclose()

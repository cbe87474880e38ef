"""Where a batch's items run: one interface, three executors (DESIGN §11).

An :class:`Executor` is asked twice per batch. :meth:`Executor.prepare` comes before the batch
is recorded: it refuses what cannot run there (a store its workers cannot open, Ray missing or
unreachable, SQLite on a cluster of several machines, a cluster too small for one actor) with
a :class:`~dspex.errors.ConfigError`, so a refused batch leaves nothing behind, and gets ready
(connects to Ray, starts the worker server). :meth:`Executor.run` then takes a
:class:`BatchRun` — the recorded batch, its input, its options, where to count progress and
statistics — and returns why the run ended. Every executor claims its items with leases in
the store and records their results itself; the batch's limits (concurrency, retries,
deadline, ``max_errors``, ``max_cost``, rate limits) are the batch's, split among the
executor's workers, never multiplied.

- :class:`InProcess`: the :class:`~dspex.batch.runner.BatchRunner` in this process.
- :class:`InProcesses`: ``workers`` local processes (:mod:`dspex.batch.workers`).
- :class:`~dspex.batch.ray_actors.RayExecutor`: actors on a Ray cluster
  (:mod:`dspex.batch.ray_actors`), imported only when a batch asks for a cluster. It keeps its
  Ray connection and its actors from one batch to the next.

A runtime holds one :class:`Executors` for its life and closes it with itself
(:meth:`Executors.aclose`), which is when kept actors end and a Ray started for them stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dspex.batch.runner import BatchRunner, Kept, RunnerOptions, StopReason

if TYPE_CHECKING:
    from dspex.batch.inputs import InputSource
    from dspex.batch.options import BatchOptions
    from dspex.batch.progress import ProgressTracker
    from dspex.batch.stats import StatsCollector
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.records import BatchRecord
    from dspex.store.base import Store

__all__ = [
    "BatchRun",
    "Executor",
    "Executors",
    "InProcess",
    "InProcesses",
    "run_here",
]


@dataclass(slots=True)
class BatchRun:
    """One run of a recorded batch, as every executor gets it.

    Attributes:
        store: the store holding the batch (shared by every worker of the executor).
        batch: the batch as recorded when the run began.
        source: its input (all of it: completed items are skipped by the claims).
        options: the batch's options and this run's lease identity.
        backend: the backend every LM module runs on, if one was named.
        tracker: counts progress.
        stats: collects statistics.
        context: what workers in other processes build their runtime from (``settings``,
            ``backends``).
        engine: this process's engine (the in-process executor runs on it).
        program: the program, built by this process's engine.
        keep: when given, filled with each written item's result by batch index.
        validated: every item's inputs as up-front validation returned them (in process only).
    """

    store: Store
    batch: BatchRecord
    source: InputSource
    options: RunnerOptions
    backend: str | None
    tracker: ProgressTracker
    stats: StatsCollector
    context: Mapping[str, Any]
    engine: Engine
    program: Program
    keep: dict[int, Kept] | None = None
    validated: Sequence[dict[str, Any]] | None = None


class Executor(Protocol):
    """Where a batch's items run (see the module docstring)."""

    async def prepare(self, store: Store, options: BatchOptions) -> None:
        """Refuse, before anything is recorded, a batch that cannot run here, and get ready
        to run it.

        Raises:
            ConfigError: the batch cannot run on this executor (the message says why).
        """

    async def run(self, run: BatchRun) -> StopReason:
        """Run the items of ``run``; why the run ended."""

    async def aclose(self) -> None:
        """Release what this executor keeps between batches."""


async def run_here(run: BatchRun) -> StopReason:
    """Run the batch in this process."""
    # Load what the modules need (imports, the embedding model, corpus embeddings) now, so the
    # first items' latencies do not carry it.
    await run.engine.prepare(run.program, strategy=run.options.strategy)
    runner = BatchRunner(
        store=run.store,
        engine=run.engine,
        program=run.program,
        program_name=run.batch.program,
        version=run.batch.program_version,
        batch_id=run.batch.id,
        items=run.source,
        options=run.options,
        tracker=run.tracker,
        stats=run.stats,
        keep=run.keep is not None,
        validated=run.validated,
    )
    reason = await runner.run()
    if run.keep is not None and runner.kept is not None:
        run.keep.update(runner.kept)
    return reason


class InProcess:
    """The batch in this process (nothing to prepare, nothing kept)."""

    async def prepare(self, store: Store, options: BatchOptions) -> None:
        pass

    async def run(self, run: BatchRun) -> StopReason:
        return await run_here(run)

    async def aclose(self) -> None:
        pass


class InProcesses:
    """The batch in ``workers`` processes on this machine (the worker server they fork
    from outlives the runtime: it is the process's)."""

    async def prepare(self, store: Store, options: BatchOptions) -> None:
        """Refuse the memory store; start the worker server (it imports dspex and DSPy while
        the input is checked and the batch created; starting the workers waits for it, and
        reports its failure, anyway).

        Raises:
            ConfigError: the store is in memory.
        """
        from dspex.batch.workers import check_shareable, start_server

        check_shareable(store)
        early = asyncio.ensure_future(asyncio.to_thread(start_server))
        early.add_done_callback(_ignore_outcome)

    async def run(self, run: BatchRun) -> StopReason:
        from dspex.batch.workers import run_in_processes

        return await run_in_processes(
            store=run.store,
            batch=run.batch,
            source=run.source,
            options=run.options,
            backend=run.backend,
            tracker=run.tracker,
            stats=run.stats,
            context=run.context,
            keep=run.keep,
        )

    async def aclose(self) -> None:
        pass


class Executors:
    """The executors of one runtime, the Ray one made when a batch first asks for a cluster;
    closed with the runtime."""

    def __init__(self) -> None:
        self.here = InProcess()
        self.processes = InProcesses()
        self.ray: Executor | None = None

    def for_options(self, options: BatchOptions) -> Executor:
        """The executor ``options`` ask for: a cluster, worker processes, or this process."""
        if options.cluster is not None:
            if self.ray is None:
                from dspex.batch.ray_actors import RayExecutor

                self.ray = RayExecutor()
            return self.ray
        if options.workers > 1:
            return self.processes
        return self.here

    async def aclose(self) -> None:
        """End what the executors keep (Ray actors; a Ray started for them)."""
        ray, self.ray = self.ray, None
        if ray is not None:
            await ray.aclose()


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

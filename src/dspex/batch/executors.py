"""Where a batch's items run: one interface, three executors (DESIGN §11).

An executor takes a :class:`BatchRun` — the recorded batch, its input, its options, where to
count progress and statistics — and returns why the run ended. Every executor claims its items
with leases in the store and records their results itself; the batch's limits (concurrency,
retries, deadline, ``max_errors``, ``max_cost``, rate limits) are the batch's, split among the
executor's workers, never multiplied.

- :func:`run_here`: the :class:`~dspex.batch.runner.BatchRunner` in this process.
- :func:`run_in_processes`: ``workers`` local processes (:mod:`dspex.batch.workers`).
- :func:`run_on_ray`: actors on a Ray cluster (:mod:`dspex.batch.ray_actors`), imported only
  when a batch asks for a cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspex.batch.options import BatchOptions
from dspex.batch.runner import BatchRunner, Kept, RunnerOptions, StopReason
from dspex.errors import ConfigError

if TYPE_CHECKING:
    from dspex.batch.inputs import InputSource
    from dspex.batch.progress import ProgressTracker
    from dspex.batch.stats import StatsCollector
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program
    from dspex.records import BatchRecord
    from dspex.store.base import Store

__all__ = [
    "BatchRun",
    "Executor",
    "check_executor",
    "executor_for",
    "run_here",
    "run_in_processes",
    "run_on_ray",
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


Executor = Callable[[BatchRun], Awaitable[StopReason]]
"""Runs the items of a :class:`BatchRun`; returns why the run ended."""


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


async def run_in_processes(run: BatchRun) -> StopReason:
    """Run the batch in ``workers`` processes on this machine."""
    from dspex.batch.workers import run_in_processes as run_processes

    return await run_processes(
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


async def run_on_ray(run: BatchRun) -> StopReason:
    """Run the batch on Ray actors."""
    from dspex.batch.ray_actors import run_on_ray as run_actors

    return await run_actors(run)


def executor_for(options: BatchOptions) -> Executor:
    """The executor ``options`` ask for: a cluster, worker processes, or this process."""
    if options.cluster is not None:
        return run_on_ray
    if options.workers > 1:
        return run_in_processes
    return run_here


def check_executor(store: Store, options: BatchOptions) -> None:
    """Refuse, before anything is recorded, an executor that cannot run here.

    Raises:
        ConfigError: worker processes or a cluster on the memory store (it lives in one
            process); a cluster without the ``ray`` extra installed.
    """
    from dspex.batch.workers import connection

    if options.cluster is None and options.workers <= 1:
        return
    if connection(store) is None:
        where = "a Ray cluster" if options.cluster is not None else "workers > 1"
        raise ConfigError(
            f"{where} needs a database every worker can open (SQLite, or PostgreSQL for more"
            " than one machine); the memory store lives in one process"
        )
    if options.cluster is not None:
        from dspex.batch.ray_actors import import_ray

        import_ray()

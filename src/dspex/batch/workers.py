"""Multi-process batches: N worker processes share the store and split the items.

DSPy's own formatting and parsing cost about half a millisecond of CPU per call, so one Python
process tops out near 2,000 DSPy calls a second; worker processes multiply that. Each worker opens
its own runtime on the same database and runs the ordinary :class:`~dspex.batch.runner.BatchRunner`
over the chunks it takes: a counter shared by the workers hands out chunk numbers, and a worker
takes the next one only when it has room for more work (its queue drained), so a worker that is
faster or started sooner takes more — no fixed split. Each worker creates and claims its chunks
with the bulk store calls, so resume skips completed items exactly as in one process. The parent
polls :meth:`~dspex.store.Store.batch_item_states` for progress, enforces ``max_errors`` and the
deadline across workers (a shared stop event), and the results are read back in input order from
the store.

Workers are forked from a *forkserver* that imported dspex (and DSPy when the parent uses it)
once: starting a worker costs milliseconds instead of a fresh interpreter's imports, and the
server is reused by every later batch of the process.

The memory store lives in one process: ``workers > 1`` needs SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.context
import queue
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.batch.inputs import InputSource, read_chunks
from dspex.batch.runner import BatchRunner, Kept, RunnerOptions, StopReason
from dspex.batch.stats import StatsCollector
from dspex.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized
    from multiprocessing.synchronize import Event

    from dspex.batch.progress import ProgressTracker
    from dspex.records import BatchRecord
    from dspex.store.base import Store

__all__ = [
    "ChunkCounter",
    "WorkerSpec",
    "check_shareable",
    "concurrency_shares",
    "run_in_processes",
    "start_server",
]

_POLL_S = 0.2
_WAKE_S = 0.01


def check_shareable(store: Store) -> None:
    """Refuse a store other processes cannot open.

    Raises:
        ConfigError: the store is in memory.
    """
    if _connection(store) is None:
        raise ConfigError(
            "workers > 1 needs a database every worker process can open (SQLite or PostgreSQL);"
            " the memory store lives in one process"
        )


def _connection(store: Store) -> tuple[str, str | None] | None:
    # The store's printable url masks the password; worker processes need the real one.
    url = getattr(store, "_url", None)
    if url is None:
        return None
    return url.render_as_string(hide_password=False), getattr(store, "schema", None)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker process needs (pickled to it)."""

    number: int
    workers: int
    database_url: str
    schema: str | None
    batch_id: str
    program: str
    version: int
    backend: str | None
    input_path: str
    options: dict[str, Any]
    settings: dict[str, Any]
    backends: Mapping[str, Any] | None
    keep: bool = False


def concurrency_shares(max_concurrency: int, workers: int) -> list[int]:
    """Each worker process's share of ``max_concurrency`` (they add up to it, none is 0).

    The limit is the batch's, not each process's: ``--concurrency 8 --workers 3`` runs at most
    8 items at once (3 + 3 + 2), and more workers than that would idle, so there are fewer.
    """
    count = max(1, min(workers, max_concurrency))
    share, extra = divmod(max_concurrency, count)
    return [share + (1 if number < extra else 0) for number in range(count)]


class ChunkCounter:
    """Hands out chunk numbers ``0, 1, 2, …`` to every worker process sharing it."""

    def __init__(self, value: Synchronized[int]) -> None:
        self._value = value

    def take(self) -> int:
        """The next chunk number nobody took yet."""
        with self._value.get_lock():
            number = self._value.value
            self._value.value = number + 1
        return number


def _worker_main(
    spec: WorkerSpec, stop: Event, counter: Synchronized[int], results: multiprocessing.Queue[Any]
) -> None:
    """The entry point of a worker process."""
    try:
        outcome = asyncio.run(_worker(spec, stop, ChunkCounter(counter)))
    except BaseException as exc:
        results.put({"number": spec.number, "error": f"{type(exc).__name__}: {exc}"})
        return
    results.put(outcome)


async def _worker(spec: WorkerSpec, stop: Event, counter: ChunkCounter) -> dict[str, Any]:
    from dspex.config import Settings
    from dspex.runtime import Runtime
    from dspex.store import open_store

    options: dict[str, Any] = {"schema": spec.schema} if spec.schema else {}
    store = open_store(spec.database_url, **options)
    settings = Settings.model_validate(spec.settings)
    runtime = Runtime(settings, store, backends=spec.backends, worker_id=None)
    async with runtime as rt:
        record = await rt.store.get_program(spec.program, spec.version)
        program = rt._ctx.programs.get(record, spec.backend)
        from dspex.batch.progress import ProgressTracker

        await rt.engine.prepare(program, strategy=spec.options.get("strategy"))
        stats = StatsCollector()
        items = read_chunks(Path(spec.input_path), spec.options["chunk_size"], counter.take)
        runner_options = RunnerOptions(**{**spec.options, "max_errors": None, "deadline": None})
        runner = BatchRunner(
            store=rt.store,
            engine=rt.engine,
            program=program,
            program_name=spec.program,
            version=spec.version,
            batch_id=spec.batch_id,
            items=items,
            options=runner_options,
            tracker=ProgressTracker(spec.batch_id, 0),
            stats=stats,
            keep=spec.keep,
        )
        task = asyncio.create_task(runner.run())
        _cancel_on_sigterm(task)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=_POLL_S / 2)
                if stop.is_set():
                    _cancel_once(task)
        except asyncio.CancelledError:
            # Ctrl-C reaches every process of the group and cancels this coroutine: the runner
            # must record its running items cancelled before the runtime (its store) closes.
            _cancel_once(task)
            await asyncio.gather(task, return_exceptions=True)
            raise
        reason = "cancelled" if task.cancelled() else task.result()
        return {
            "number": spec.number,
            "reason": reason,
            "latencies": list(stats.latencies),
            "tokens": stats.tokens,
            "errors": dict(stats.errors),
            "retries": stats.retries,
            "ran": stats.ran,
            "kept": list(runner.kept.items()) if runner.kept is not None else None,
        }


def _cancel_on_sigterm(task: asyncio.Task[Any]) -> None:
    # A service manager (systemd, docker stop) signals every process of the group: a worker
    # stops as on the stop event, recording its running items cancelled, not leaving them
    # running until their leases expire.
    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows, non-main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _cancel_once, task)


def _cancel_once(task: asyncio.Task[Any]) -> None:
    # A second cancel would interrupt the runner's shielded shutdown: the run would end while
    # that shutdown still writes, and the runtime would close the store under it.
    if not task.done() and not task.cancelling():
        task.cancel()


async def run_in_processes(
    *,
    store: Store,
    batch: BatchRecord,
    source: InputSource,
    options: RunnerOptions,
    workers: int,
    backend: str | None,
    tracker: ProgressTracker,
    stats: StatsCollector,
    context: Mapping[str, Any],
    keep: dict[int, Kept] | None = None,
) -> StopReason:
    """Run the batch in ``workers`` processes; returns why it ended (see the module docstring).

    With ``keep`` (a dict to fill), each worker sends back what it wrote, by batch index, as
    :class:`~dspex.batch.runner.Kept` entries, so a list input's results need no read-back.

    Raises:
        ConfigError: the store cannot be shared.
        StorageError: a worker failed.
        asyncio.CancelledError: cancelled; the workers were stopped (their running items are
            recorded ``cancelled``) before this returns.
    """
    connection = _connection(store)
    if connection is None:
        check_shareable(store)
        raise AssertionError("unreachable")
    spool = None
    if source.path is None:
        from dspex.batch.inputs import _spool

        spool = _spool(r.value for r in source)
        path = spool.path
    else:
        path = source.path
    assert path is not None
    settings = dict(context.get("settings") or {})
    base = replace(options, worker_id=f"{options.worker_id}")
    shares = concurrency_shares(options.max_concurrency, workers)
    workers = len(shares)
    mp = _context()
    stop = mp.Event()
    counter = mp.Value("q", 0)
    results: multiprocessing.Queue[Any] = mp.Queue()
    processes = []
    for number in range(workers):
        spec = WorkerSpec(
            number=number,
            workers=workers,
            database_url=connection[0],
            schema=connection[1],
            batch_id=batch.id,
            program=batch.program,
            version=batch.program_version,
            backend=backend,
            input_path=str(path),
            options={
                **{k: v for k, v in asdict(base).items() if k != "retry"},
                "max_concurrency": shares[number],
                "worker_id": f"{base.worker_id}/{number}",
            },
            settings=settings,
            backends=context.get("backends"),
            keep=keep is not None,
        )
        process = mp.Process(target=_worker_main, args=(spec, stop, counter, results), daemon=True)
        process.start()
        processes.append(process)
    outcomes: list[dict[str, Any]] = []
    reason: StopReason = "completed"
    started = time.monotonic()
    polled = 0.0
    try:
        while len(outcomes) < workers:
            # Wake often to notice finished workers at once; read the store's counts less often.
            await asyncio.sleep(_WAKE_S)
            _drain(results, outcomes)
            now = time.monotonic()
            if len(outcomes) < workers and now - polled < _POLL_S:
                continue
            polled = now
            states = await store.batch_item_states(batch.id)
            await tracker.set_counts(
                states.get("completed", 0), states.get("failed", 0), states.get("cancelled", 0)
            )
            limit = options.max_errors
            if limit is not None and reason == "completed":
                # failures of an earlier run leave the count when re-claimed: a lower bound
                failed_now = states.get("failed", 0) - batch.failed
                if failed_now > limit:
                    reason = "max_errors"
                    stop.set()
            deadline = options.deadline
            late = deadline is not None and time.monotonic() - started > deadline
            if late and reason == "completed":
                reason = "deadline"
                stop.set()
            if len(outcomes) < workers and not any(p.is_alive() for p in processes):
                _drain(results, outcomes)
                if len(outcomes) < workers:
                    raise StorageError("a batch worker process died without reporting")
    except asyncio.CancelledError:
        stop.set()
        await asyncio.shield(asyncio.to_thread(_join, processes))
        raise
    finally:
        if spool is not None:
            spool.close()
    await asyncio.to_thread(_join, processes)
    for outcome in outcomes:
        if "error" in outcome:
            raise StorageError(f"batch worker {outcome['number']} failed: {outcome['error']}")
        stats.latencies.extend(outcome["latencies"])
        for model, counts in outcome["tokens"].items():
            total = stats.tokens.setdefault(model, {})
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
        stats.errors.update(outcome["errors"])
        stats.retries += outcome["retries"]
        stats.ran += outcome["ran"]
        if keep is not None and outcome.get("kept") is not None:
            keep.update(outcome["kept"])
    states = await store.batch_item_states(batch.id)
    await tracker.set_counts(
        states.get("completed", 0), states.get("failed", 0), states.get("cancelled", 0)
    )
    return reason


# Everything a worker imports to run a batch, so that no worker imports (or, without bytecode
# files, compiles) a module of its own: what the server imported, every fork has.
_PRELOAD = (
    "dspex.batch.workers",
    "dspex.runtime",
    "dspex.store.sql",
    "dspex.config",
    "dspex.engine.engine",
    "dspex.telemetry",
    "aiosqlite",
)
_PRELOAD_DSPY = (
    "dspy",
    "dspy.clients.execution",
    "dspy.clients.call_result",
    "dspex.backends.dspy_backend",
    "dspex.backends._dspy_adapter",
    "dspex.signatures.dspy_interop",
)


def start_server(*, wait: bool = False) -> None:
    """Start the forkserver worker processes are forked from, if it is not running yet.

    It imports dspex (and DSPy when this process has it) once, which takes a second or two;
    starting it early lets that overlap other work. With ``wait`` this returns only once the
    server is ready (it forks one process that does nothing), so the next batch with workers
    starts its processes in milliseconds. Blocking: call it in a thread from async code.
    """
    context = _context()
    if context.get_start_method() != "forkserver":  # pragma: no cover - not POSIX
        return
    from multiprocessing import forkserver

    forkserver.ensure_running()
    if wait:
        process = context.Process(target=_ready, daemon=True)
        process.start()
        process.join()


def _ready() -> None:
    """A worker that does nothing: forked once the server has imported everything."""


def _context() -> multiprocessing.context.ForkServerContext | multiprocessing.context.SpawnContext:
    """The forkserver context, preloading what a worker imports (DSPy when this process has it).

    Falls back to *spawn* where there is no forkserver (not POSIX).
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        return multiprocessing.get_context("spawn")
    preload = list(_PRELOAD)
    if "dspy" in sys.modules:
        preload.extend(_PRELOAD_DSPY)
    context = multiprocessing.get_context("forkserver")
    # Only takes effect when the server starts (the first batch with workers): later calls
    # reuse the running server.
    context.set_forkserver_preload(preload)
    return context


def _drain(results: multiprocessing.Queue[Any], outcomes: list[dict[str, Any]]) -> None:
    while True:
        try:
            outcomes.append(results.get_nowait())
        except queue.Empty:
            return


def _join(processes: list[Any]) -> None:
    for process in processes:
        process.join()

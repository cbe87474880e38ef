"""Multi-process batches: N worker processes share the store and split the items.

DSPy's own formatting and parsing cost about half a millisecond of CPU per call, so one Python
process tops out near 2,000 DSPy calls a second; worker processes multiply that. Each worker opens
its own runtime on the same database and runs the ordinary :class:`~dspex.batch.runner.BatchRunner`
over the chunks it takes (:mod:`dspex.batch._worker`). The host (the process that called
``run_batch``) hands out chunk numbers: a worker asks for the next one when its reader has room
to work ahead (a few chunks beyond what runs), so a worker that is faster or started sooner takes
more — no fixed split. Each worker creates and claims its chunks
with the bulk store calls, so resume skips completed items exactly as in one process. The host
reads :meth:`~dspex.store.Store.batch_item_states` for progress, enforces ``max_errors`` and the
deadline across workers (each worker also enforces them on its own), and tells the workers to
stop.

Workers are forked from dspex's worker server (:mod:`dspex.batch._server`), which imported
dspex (and DSPy when the host uses it) once: starting a worker costs milliseconds. Each worker
talks to the host over a socket of its own and watches the host's lifeline, so:

- the host gone (``kill -9`` included): every worker stops within a second or two, recording
  its running items ``cancelled``; the batch is resumable.
- a worker gone (killed, crashed): the host records the items it was running ``cancelled`` and
  a new worker takes its chunks over (they are claimed again, completed items skipped), so the
  batch still completes — unless workers keep dying (:data:`MAX_LOST`), which ends the batch
  with a :class:`~dspex.errors.BatchError` naming the batch and how to resume it.
- the host stopped (Ctrl-C, SIGTERM, the deadline, ``max_errors``): workers cancel their running
  items, record them and report; one that does not within :data:`STOP_GRACE_S` is killed and
  its items recorded by the host.

The memory store lives in one process: ``workers > 1`` needs SQLite or PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from dspex.batch._server import host_context, worker_server
from dspex.batch._wire import read, write
from dspex.batch.inputs import InputSource
from dspex.batch.runner import Kept, RunnerOptions, StopReason
from dspex.batch.stats import StatsCollector
from dspex.errors import BatchError, ConfigError, StorageError
from dspex.records import ExecutionFilter, ExecutionStatus, FinishRequest
from dspex.resilience.ratelimit import split_limits

if TYPE_CHECKING:
    from dspex.batch.options import BatchOptions
    from dspex.batch.progress import ProgressTracker
    from dspex.records import BatchRecord
    from dspex.store.base import Store

__all__ = [
    "MAX_LOST",
    "STOP_GRACE_S",
    "WorkerSpec",
    "cancel_running",
    "check_shareable",
    "concurrency_shares",
    "connection",
    "merge_outcome",
    "poll_limits",
    "run_in_processes",
    "start_server",
    "worker_id",
]

log = logging.getLogger("dspex.batch")

STOP_GRACE_S = 10.0
"""How long a stopped worker may take to record its running items before the host kills it."""

MAX_LOST = 3
"""Worker processes a batch run may lose (each replaced) before it stops with an error."""

_POLL_S = 0.2
_WORKER_MAIN = "dspex.batch._worker:worker_main"


def check_shareable(store: Store) -> None:
    """Refuse a store other processes cannot open.

    Raises:
        ConfigError: the store is in memory.
    """
    if connection(store) is None:
        raise ConfigError(
            "workers > 1 needs a database every worker process can open (SQLite or PostgreSQL);"
            " the memory store lives in one process"
        )


def connection(store: Store) -> tuple[str, str | None] | None:
    """The URL (with its password: worker processes and actors connect with it) and schema
    of a SQL store; ``None`` for the memory store."""
    url = getattr(store, "_url", None)
    if url is None:
        return None
    return url.render_as_string(hide_password=False), getattr(store, "schema", None)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker process (or Ray actor) needs (pickled to it)."""

    number: int
    database_url: str
    schema: str | None
    batch_id: str
    program: str
    version: int
    backend: str | None
    input_path: str | None  # None: a Ray actor, fed its items by the driver
    options: RunnerOptions
    settings: dict[str, Any]
    backends: Mapping[str, Any] | None
    keep: bool = False


def worker_id(prefix: str, pid: int | str) -> str:
    """The lease identity of the worker process ``pid`` (or the Ray actor so named; ``prefix``
    names its batch run and its share): who holds an item can be read off the item."""
    return f"{prefix}@{pid}"


def concurrency_shares(max_concurrency: int, workers: int) -> list[int]:
    """Each worker process's share of ``max_concurrency`` (they add up to it, none is 0).

    The limit is the batch's, not each process's: ``--concurrency 8 --workers 3`` runs at most
    8 items at once (3 + 3 + 2), and more workers than that would idle, so there are fewer.
    """
    count = max(1, min(workers, max_concurrency))
    share, extra = divmod(max_concurrency, count)
    return [share + (1 if number < extra else 0) for number in range(count)]


def start_server(*, wait: bool = False) -> None:
    """Start the worker server worker processes are forked from, if it is not running yet.

    It imports dspex (and DSPy when this process has it) once, which takes a second or two;
    starting it early lets that overlap other work. With ``wait`` this returns only once the
    server is ready, so the next batch with workers starts its processes in milliseconds.
    Blocking: call it in a thread from async code.

    Raises:
        StorageError: the server could not start.
    """
    server = worker_server(dspy="dspy" in sys.modules)
    if wait:
        server.ping()


# -- the host ---------------------------------------------------------------------------------


MemberT = TypeVar("MemberT", bound="Member")


class Member(Protocol):
    """A worker as its host sees it (a process, or a Ray actor)."""

    number: int  # its share of the concurrency
    worker_id: str
    taken: list[int]  # the chunks it was given
    outcome: dict[str, Any] | None  # what it reported at its end (None: nothing)
    ended: bool  # it is gone
    handled: bool  # its end was dealt with


class Supervisor(Generic[MemberT]):
    """What the host of a batch's workers does whatever they are: stop them, watch them until
    every one ended, re-run the chunks of one that is lost, kill the ones that do not stop, and
    wind them all down after an error. :class:`_Pool` (processes) and the Ray driver
    (:mod:`dspex.batch.ray_actors`) say how to start, stop, kill and name theirs.

    Attributes:
        who: what a worker is, for messages (``"worker process"``).
    """

    who = "worker"

    def __init__(self, store: Store, batch: BatchRecord, options: BatchOptions) -> None:
        self.store = store
        self.batch = batch
        self.batch_options = options
        self.members: list[MemberT] = []
        self.reason: StopReason = "completed"
        self.stopping = False
        self.failure: BatchError | None = None
        self.lost = 0
        self.resume_hint = f"resume it with --resume {batch.id}"
        self._reissued: list[int] = []
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self._stopped_at: float | None = None

    # -- what a kind of worker does ----------------------------------------------------------

    def label(self, member: MemberT) -> str:
        """How messages name ``member`` (after :attr:`who`)."""
        raise NotImplementedError

    def _send_stop(self, member: MemberT) -> None:
        """Ask ``member`` to stop (it records its running items cancelled and reports)."""
        raise NotImplementedError

    def _kill(self, member: MemberT) -> None:
        """End ``member`` at once."""
        raise NotImplementedError

    async def _ended(self, member: MemberT) -> None:
        """Deal with the end of ``member`` (its outcome, or its loss)."""
        raise NotImplementedError

    async def _replace(self, member: MemberT) -> None:
        """Start another worker for the share of ``member``, which was lost."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------

    def live(self) -> list[MemberT]:
        return [m for m in self.members if not m.ended]

    def deadline_left(self) -> float | None:
        """What is left of the batch's ``deadline`` for a worker starting now (``None``: no
        deadline); past it, the batch is stopped and ``0.0`` returned."""
        deadline = self.batch_options.deadline
        if deadline is None:
            return None
        left = deadline - (self._loop.time() - self._started)
        if left <= 0:
            self.stop("deadline")
            return 0.0
        return left

    def stop(self, reason: StopReason) -> None:
        """Stop every worker (they record their running items cancelled and report)."""
        if not self.stopping:
            self.stopping = True
            self._stopped_at = self._loop.time()
            if self.reason == "completed":
                self.reason = reason
        for member in self.live():
            self._send_stop(member)

    def failed(self, member: MemberT, error: str) -> None:
        """``member`` reported an error: the batch stops with it."""
        self.failure = self.failure or BatchError(
            f"batch {self.batch.id} stopped: {self.who} {self.label(member)} failed: {error};"
            f" {self.resume_hint}",
            batch_id=self.batch.id,
        )
        self.stop("cancelled")

    async def watch(self, tracker: ProgressTracker) -> StopReason:
        """Watch the workers until every one has ended; returns why the batch ended.

        Raises:
            BatchError: a worker failed, or too many workers were lost.
        """
        polled = 0.0
        deadline = self.batch_options.deadline
        while self.live() or any(not m.handled for m in self.members):
            await self._wait()
            for member in self.members:
                if member.ended and not member.handled:
                    member.handled = True
                    await self._ended(member)
            now = self._loop.time()
            if now - polled >= _POLL_S:
                polled = now
                reason = await poll_limits(self.store, self.batch, self.batch_options, tracker)
                if reason is not None:
                    self.stop(reason)
            if deadline is not None and now - self._started > deadline:
                self.stop("deadline")
            if self.stopping:
                self._kill_stragglers()
        if self.failure is not None:
            raise self.failure
        return self.reason

    async def _wait(self) -> None:
        """Until a worker changed, or :data:`_POLL_S` passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_POLL_S):
                await self._changed.wait()
        self._changed.clear()

    async def lose(self, member: MemberT, how: str) -> None:
        """``member`` ended without finishing its chunks: its running items are recorded
        cancelled (claimable again at once) and its chunks go to another worker."""
        self.lost += 1
        cancelled = await cancel_running(
            self.store, self.batch.id, member.worker_id, how, who=self.who
        )
        log.warning(
            "batch %s: %s %s ended before its items did (%s); %d running items recorded"
            " cancelled, its %d chunks go to another one",
            self.batch.id,
            self.who,
            self.label(member),
            how,
            cancelled,
            len(member.taken),
        )
        self._reissued = sorted({*self._reissued, *member.taken})
        if self.stopping:
            return
        if self.lost > MAX_LOST:
            self.failure = BatchError(
                f"batch {self.batch.id} stopped: {self.lost} times a {self.who} ended before"
                f" its items did (the last one: {self.label(member)}, {how}); {self.resume_hint}",
                batch_id=self.batch.id,
            )
            self.stop("cancelled")
            return
        await self._replace(member)

    def _kill_stragglers(self) -> None:
        """Kill the workers that did not end within :data:`STOP_GRACE_S` of the stop."""
        if self._stopped_at is None or self._loop.time() - self._stopped_at < STOP_GRACE_S:
            return
        for member in self.live():
            log.warning(
                "batch %s: %s %s did not stop; killed", self.batch.id, self.who, self.label(member)
            )
            self._kill(member)

    async def shutdown(self) -> None:
        """Stop and wait for every worker (after an error or a cancellation of the host)."""
        self.stop("cancelled")
        while self.live() or any(not m.handled for m in self.members):
            await self._wait()
            for member in self.members:
                if member.ended and not member.handled:
                    member.handled = True
                    if member.outcome is None:
                        await cancel_running(
                            self.store,
                            self.batch.id,
                            member.worker_id,
                            "the batch was stopped",
                            who=self.who,
                        )
            self._kill_stragglers()


@dataclass(eq=False)
class _Worker:
    """One worker process as the host sees it."""

    number: int  # its share of the concurrency
    pid: int
    worker_id: str
    writer: asyncio.StreamWriter
    taken: list[int] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    ended: bool = False  # its socket closed: the process is gone
    handled: bool = False
    served: asyncio.Task[None] | None = None


class _Pool(Supervisor[_Worker]):
    """The host's side of a multi-process batch run: starts workers, hands out chunks,
    watches them and replaces the ones that die."""

    who = "worker process"

    def __init__(
        self,
        *,
        store: Store,
        batch: BatchRecord,
        path: Path,
        options: RunnerOptions,
        shares: list[int],
        backend: str | None,
        context: Mapping[str, Any],
        keep: bool,
    ) -> None:
        super().__init__(store, batch, options.batch)
        self.path = path
        self.options = options
        self.shares = shares
        self.backend = backend
        self.context = context
        self.keep = keep
        self._chunks = -(-batch.total // options.batch.chunk_size)
        self._next = 0

    @property
    def workers(self) -> list[_Worker]:
        return self.members

    # -- workers ----------------------------------------------------------------------------

    def spec(self, number: int, deadline: float | None) -> WorkerSpec:
        """What worker ``number`` is sent: the batch's options whole, with its share of
        ``max_concurrency``, the ``deadline`` left and its own worker id."""
        options = self.options
        batch = options.batch.model_copy(
            update={"max_concurrency": self.shares[number], "deadline": deadline}
        )
        settings = dict(self.context.get("settings") or {})
        if settings.get("backends"):
            # rpm/tpm are the batch's: each worker process keeps its share of them
            settings["backends"] = split_limits(settings["backends"], len(self.shares))
        return WorkerSpec(
            number=number,
            database_url=self.context["database_url"],
            schema=self.context["schema"],
            batch_id=self.batch.id,
            program=self.batch.program,
            version=self.batch.program_version,
            backend=self.backend,
            input_path=str(self.path),
            options=replace(options, batch=batch, worker_id=f"{options.worker_id}/{number}"),
            settings=settings,
            backends=self.context.get("backends"),
            keep=self.keep,
        )

    async def start(self, number: int) -> None:
        """Fork a worker for share ``number`` and serve it."""
        deadline = self.deadline_left()
        if deadline == 0.0:
            return
        spec = self.spec(number, deadline)
        try:
            payload = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise ConfigError(
                "workers > 1 sends the runtime's backends to each worker process, and these"
                f" cannot be pickled: {exc}"
            ) from None
        host_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            context = host_context(main=b"__main__" in payload)
            server = await asyncio.to_thread(worker_server, dspy="dspy" in sys.modules)
            pid = await asyncio.to_thread(
                server.fork, _WORKER_MAIN, payload, [worker_end.fileno()], context
            )
        except StorageError as exc:
            host_end.close()
            raise BatchError(
                f"batch {self.batch.id} stopped: {exc.message}; {self.resume_hint}",
                batch_id=self.batch.id,
            ) from exc
        except BaseException:
            host_end.close()
            raise
        finally:
            worker_end.close()  # the worker has its own copy: its end of file is its exit
        reader, writer = await asyncio.open_unix_connection(sock=host_end)
        worker = _Worker(number, pid, worker_id(spec.options.worker_id, pid), writer)
        worker.served = asyncio.create_task(self._serve(worker, reader), name=f"batch-host-{pid}")
        self.members.append(worker)

    async def _serve(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """Answer one worker's requests until its socket closes."""
        try:
            while True:
                message = await read(reader)
                if message is None:
                    break
                if message[0] == "take":
                    write(worker.writer, ("chunk", self._take(worker)))
                elif message[0] == "outcome":
                    worker.outcome = message[1]
        finally:
            worker.ended = True
            worker.writer.close()
            self._changed.set()

    def _take(self, worker: _Worker) -> int | None:
        """The next chunk for ``worker``: chunks a lost worker had first, then new ones.

        A worker reads the input front to back once, so it gets only numbers above its last.
        """
        if self.stopping:
            return None
        last = worker.taken[-1] if worker.taken else -1
        for position, chunk in enumerate(self._reissued):
            if chunk > last:
                del self._reissued[position]
                worker.taken.append(chunk)
                return chunk
        if self._next < self._chunks:
            chunk = self._next
            self._next += 1
            worker.taken.append(chunk)
            return chunk
        return None

    def label(self, member: _Worker) -> str:
        return str(member.pid)

    def _send_stop(self, member: _Worker) -> None:
        write(member.writer, ("stop",))

    def _kill(self, member: _Worker) -> None:
        with contextlib.suppress(OSError):
            os.kill(member.pid, signal.SIGKILL)

    async def _replace(self, member: _Worker) -> None:
        await self.start(member.number)

    async def _ended(self, worker: _Worker) -> None:
        outcome = worker.outcome
        if outcome is not None and "error" in outcome:
            self.failed(worker, outcome["error"])
            return
        reason = None if outcome is None else outcome["reason"]
        if reason in ("max_errors", "max_cost", "deadline"):
            self.stop(reason)
        if reason is None or (reason == "cancelled" and not self.stopping):
            await self.lose(worker, "it was killed" if outcome is None else "it was cancelled")

    def close(self) -> None:
        for worker in self.workers:
            worker.writer.close()
            if worker.served is not None:
                worker.served.cancel()


async def cancel_running(
    store: Store, batch_id: str, holder: str, how: str, *, who: str = "worker process"
) -> int:
    """Record the items ``holder`` (a worker that is gone: a ``who``) still has running as
    cancelled, so they can be claimed again at once instead of when their lease expires."""
    query = ExecutionFilter(batch_id=batch_id, statuses=(ExecutionStatus.RUNNING,))
    requests: list[FinishRequest] = []
    cursor: str | None = None
    while True:
        page = await store.list_executions(query, limit=500, cursor=cursor)
        requests.extend(
            FinishRequest(
                execution_id=record.id,
                lease_token=record.lease_token,
                status=ExecutionStatus.CANCELLED,
                error_code="cancelled",
                error_message=f"the {who} running this item ended ({how})",
            )
            for record in page.items
            if record.worker_id == holder and record.lease_token is not None
        )
        cursor = page.next_cursor
        if cursor is None or not page.items:
            break
    if requests:
        await store.finish_executions(requests)
    return len(requests)


async def run_in_processes(
    *,
    store: Store,
    batch: BatchRecord,
    source: InputSource,
    options: RunnerOptions,
    backend: str | None,
    tracker: ProgressTracker,
    stats: StatsCollector,
    context: Mapping[str, Any],
    keep: dict[int, Kept] | None = None,
) -> StopReason:
    """Run the batch in ``options.batch.workers`` processes; returns why it ended (see the
    module docstring).

    With ``keep`` (a dict to fill), each worker sends back what it wrote, by batch index, as
    :class:`~dspex.batch.runner.Kept` entries, so a list input's results need no read-back.

    Raises:
        ConfigError: the store cannot be shared, or the backends cannot be sent to a worker.
        BatchError: a worker failed, or worker processes kept dying (``.batch_id``).
        StorageError: the worker server could not start.
        asyncio.CancelledError: cancelled; the workers were stopped (their running items are
            recorded ``cancelled``) before this returns.
    """
    shared = connection(store)
    if shared is None:
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
    pool = _Pool(
        store=store,
        batch=batch,
        path=path,
        options=options,
        shares=concurrency_shares(options.batch.max_concurrency, options.batch.workers),
        backend=backend,
        context={**context, "database_url": shared[0], "schema": shared[1]},
        keep=keep is not None,
    )
    try:
        try:
            for number in range(len(pool.shares)):
                await pool.start(number)
            reason = await pool.watch(tracker)
        except BaseException:
            await asyncio.shield(pool.shutdown())
            raise
        finally:
            pool.close()
    finally:
        if spool is not None:
            spool.close()
    for worker in pool.workers:
        merge_outcome(worker.outcome, stats, keep)
    await poll_limits(store, batch, None, tracker)
    return reason


def merge_outcome(
    outcome: Mapping[str, Any] | None, stats: StatsCollector, keep: dict[int, Kept] | None
) -> None:
    """Add what a worker (process or Ray actor) reports of its run to the batch's statistics
    and, with ``keep``, its written items' results (nothing for a worker that failed or died)."""
    if outcome is None or "error" in outcome:
        return
    stats.latencies.extend(outcome["latencies"])
    for model, counts in outcome["tokens"].items():
        total = stats.tokens.setdefault(model, {})
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    stats.errors.update(outcome["errors"])
    stats.retries += outcome["retries"]
    stats.ran += outcome["ran"]
    stats.cost_usd += outcome.get("cost_usd", 0.0)
    stats.rate_limited_s += outcome.get("rate_limited_s", 0.0)
    if keep is not None and outcome.get("kept") is not None:
        keep.update(outcome["kept"])


async def poll_limits(
    store: Store, batch: BatchRecord, options: BatchOptions | None, tracker: ProgressTracker
) -> StopReason | None:
    """Read the batch's item counts into ``tracker`` and, with ``options``, whether the whole
    batch went past ``max_errors`` or ``max_cost`` (what every worker wrote counts): the reason
    to stop its workers, else ``None``."""
    states = await store.batch_item_states(batch.id)
    await tracker.set_counts(
        states.get("completed", 0), states.get("failed", 0), states.get("cancelled", 0)
    )
    if options is None:
        return None
    limit = options.error_limit
    # failures of an earlier run leave the count when re-claimed: a lower bound
    if limit is not None and states.get("failed", 0) - batch.failed > limit:
        return "max_errors"
    budget = options.max_cost
    if budget is not None:
        # every worker's spending is added to the batch as its items are written
        spent = (await store.get_batch(batch.id)).cost_usd - batch.cost_usd
        if spent >= budget:
            return "max_cost"
    return None

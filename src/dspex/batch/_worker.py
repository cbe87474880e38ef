"""A batch worker process: the runner over the chunks its host hands it, until told to stop.

Forked by the worker server (:mod:`dspex.batch._server`) for one batch run of its host (see
:mod:`dspex.batch.workers`). It opens its own runtime on the batch's database and runs the
ordinary :class:`~dspex.batch.runner.BatchRunner`, with the batch's deadline and ``max_errors``
applied here too. It stops — recording its running items ``cancelled`` — when the host says
``stop``, when its socket to the host closes, on SIGTERM or SIGINT, and when the host's
lifeline reaches end of file (the host is gone), in which case it exits within
:data:`~dspex.batch._server.ORPHAN_GRACE_S` however far it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspex.batch._server import EXIT_ORPHANED, ORPHAN_GRACE_S
from dspex.batch._wire import Frames, send
from dspex.batch.inputs import RawItem, read_chunks
from dspex.batch.runner import BatchRunner
from dspex.batch.stats import StatsCollector
from dspex.batch.workers import WorkerSpec, worker_id

if TYPE_CHECKING:
    from dspex.runtime import Runtime

__all__ = ["batch_runner", "outcome_of", "worker_main", "worker_runner", "worker_runtime"]

_NO_MORE = sys.maxsize  # a chunk number past any input: a reader given it reads no more


class _Link:
    """A worker's end of its socket to the host: chunk numbers on request, ``stop``, the
    outcome. End of file (the host closed it or is gone) stops the worker like ``stop``.

    Everything waits on the event loop, never blocks it: a host that does not answer (stopped,
    busy) cannot keep this worker from stopping on its own deadline or ``max_errors``.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._frames = Frames()
        self._asked: deque[asyncio.Future[int]] = deque()  # chunk requests, in order
        self._on_stop: Callable[[], None] | None = None
        self.stopped = False
        self.gone = False

    def attach(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        """Watch the socket on ``loop``; ``on_stop`` runs once when the host says stop."""
        self._on_stop = on_stop
        loop.add_reader(self._sock.fileno(), self._readable)
        if self.stopped:
            on_stop()

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._sock.fileno())

    async def next_chunk(self) -> int:
        """The next chunk number the host hands this worker; :data:`_NO_MORE` when none is
        left or the host is gone."""
        if self.gone:
            return _NO_MORE
        try:
            send(self._sock, ("take",))
        except OSError:
            self.host_gone()
            return _NO_MORE
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._asked.append(answer)
        return await answer

    def report(self, outcome: dict[str, Any]) -> None:
        """Send the outcome (nothing happens when the host is gone)."""
        with contextlib.suppress(OSError):
            send(self._sock, ("outcome", outcome))

    def host_gone(self) -> None:
        """The host closed its end or is gone: no more chunks, stop."""
        self.gone = True
        while self._asked:
            self._answer(_NO_MORE)
        self._stop()

    def _readable(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.host_gone()
            return
        for message in self._frames.feed(data):
            if message[0] == "chunk" and self._asked:
                self._answer(_NO_MORE if message[1] is None else int(message[1]))
            elif message[0] == "stop":
                self._stop()

    def _answer(self, chunk: int) -> None:
        asked = self._asked.popleft()
        if not asked.done():  # not cancelled: the producer is still waiting
            asked.set_result(chunk)

    def _stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            if self._on_stop is not None:
                self._on_stop()


async def _items(path: Path, chunk_size: int, link: _Link) -> AsyncIterator[RawItem]:
    """The items of the chunks the host hands this worker, in file order.

    :func:`~dspex.batch.inputs.read_chunks` asks for a chunk number when it starts and when it
    reaches the first item past the chunk it has; this fetches that number from the host
    (waiting on the loop) just before such a step, so the reader itself never waits and this
    worker takes a chunk no sooner than it did when the reader asked itself.
    """
    numbers: deque[int] = deque()

    def take() -> int:
        if not numbers:  # pragma: no cover - read_chunks asked at a step not foreseen here
            raise RuntimeError("the chunk reader asked for a chunk number out of turn")
        return numbers.popleft()

    reader = read_chunks(path, chunk_size, take)
    last: int | None = None
    while True:
        if not numbers and (last is None or (last + 1) % chunk_size == 0):
            numbers.append(await link.next_chunk())
        try:
            raw = next(reader)
        except StopIteration:
            return
        last = raw.index
        yield raw


def worker_main(payload: bytes, fds: list[int], lifeline: int) -> int:
    """A worker process's main (forked by the worker server); returns its exit status."""
    link = _Link(socket.socket(fileno=fds[0]))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _watch_lifeline(lifeline, loop, link)
    try:
        spec: WorkerSpec = pickle.loads(payload)
        outcome = loop.run_until_complete(_worker(spec, link))
    except BaseException as exc:
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    link.report(outcome)
    return 0


def _watch_lifeline(fd: int, loop: asyncio.AbstractEventLoop, link: _Link) -> None:
    """When the host is gone, stop the batch; exit hard if that takes over ORPHAN_GRACE_S.

    A thread, so that a worker whose event loop is busy (or blocked) still leaves in time.
    """

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 64):  # nothing is ever written: this returns at end of file
                pass
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is ending
            loop.call_soon_threadsafe(link.host_gone)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="dspex-lifeline", daemon=True).start()


async def _worker(spec: WorkerSpec, link: _Link) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    async with worker_runner(spec, _items_of(spec, link), os.getpid()) as runner:
        task = asyncio.create_task(runner.run())
        # Stopped by the host, its end of file, or a signal to this process (a service manager
        # signals every process of the group): the runner records its running items
        # cancelled, not leaving them running until their leases expire.
        link.attach(loop, lambda: _cancel_once(task))
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _cancel_once, task)
        try:
            await asyncio.wait({task})
        finally:
            link.detach(loop)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        return outcome_of(spec.number, task, runner)


def _items_of(spec: WorkerSpec, link: _Link) -> AsyncIterator[RawItem]:
    assert spec.input_path is not None
    return _items(Path(spec.input_path), spec.options.batch.chunk_size, link)


@contextlib.asynccontextmanager
async def worker_runner(
    spec: WorkerSpec, items: AsyncIterator[RawItem], where: int | str
) -> AsyncIterator[BatchRunner]:
    """A runner over ``items`` on a runtime of the worker's own (its store, engine and
    backends, built once), the program prepared; ``where`` (a pid, an actor's name) ends its
    lease identity."""
    async with worker_runtime(spec) as rt:
        yield await batch_runner(rt, spec, items, where)


def worker_runtime(spec: WorkerSpec) -> Runtime:
    """The runtime a worker (process or Ray actor) builds from ``spec``: its own store
    connection, engine and backends (``async with`` it)."""
    from dspex.config import Settings
    from dspex.runtime import Runtime
    from dspex.store import open_store

    options: dict[str, Any] = {"schema": spec.schema} if spec.schema else {}
    store = open_store(spec.database_url, **options)
    settings = Settings.model_validate(spec.settings)
    return Runtime(settings, store, backends=spec.backends, worker_id=None)


async def batch_runner(
    rt: Runtime, spec: WorkerSpec, items: AsyncIterator[RawItem], where: int | str
) -> BatchRunner:
    """A runner of ``spec``'s batch over ``items`` on the worker's runtime ``rt``, its program
    prepared (once per runtime: the engine and the program cache keep what they built)."""
    from dspex.batch.progress import ProgressTracker

    record = await rt.store.get_program(spec.program, spec.version)
    program = rt._ctx.programs.get(record, spec.backend)
    await rt.engine.prepare(program, strategy=spec.options.strategy)
    runner_options = replace(spec.options, worker_id=worker_id(spec.options.worker_id, where))
    return BatchRunner(
        store=rt.store,
        engine=rt.engine,
        program=program,
        program_name=spec.program,
        version=spec.version,
        batch_id=spec.batch_id,
        items=items,
        options=runner_options,
        tracker=ProgressTracker(spec.batch_id, 0),
        stats=StatsCollector(),
        keep=spec.keep,
    )


def outcome_of(number: int, task: asyncio.Task[Any], runner: BatchRunner) -> dict[str, Any]:
    """What a worker reports when its runner ended (see
    :func:`~dspex.batch.workers.merge_outcome`)."""
    stats = runner.stats
    return {
        "number": number,
        "reason": "cancelled" if task.cancelled() else task.result(),
        "latencies": list(stats.latencies),
        "tokens": stats.tokens,
        "errors": dict(stats.errors),
        "retries": stats.retries,
        "ran": stats.ran,
        "cost_usd": stats.cost_usd,
        "rate_limited_s": stats.rate_limited_s,
        "kept": list(runner.kept.items()) if runner.kept is not None else None,
    }


def _cancel_once(task: asyncio.Task[Any]) -> None:
    # A second cancel would interrupt the runner's shielded shutdown: the run would end while
    # that shutdown still writes, and the runtime would close the store under it.
    if not task.done() and not task.cancelling():
        task.cancel()

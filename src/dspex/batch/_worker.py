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
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dspex.batch._server import EXIT_ORPHANED, ORPHAN_GRACE_S
from dspex.batch._wire import Frames, send
from dspex.batch.inputs import read_chunks
from dspex.batch.runner import BatchRunner, RunnerOptions
from dspex.batch.stats import StatsCollector
from dspex.batch.workers import WorkerSpec, worker_id

__all__ = ["worker_main"]

_NO_MORE = sys.maxsize  # a chunk number past any input: a reader given it reads no more


class _Link:
    """A worker's end of its socket to the host: chunk numbers on request, ``stop``, the
    outcome. End of file (the host closed it or is gone) stops the worker like ``stop``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        sock.setblocking(False)
        self._frames = Frames()
        self._inbox: deque[Any] = deque()
        self._on_stop: Callable[[], None] | None = None
        self.stopped = False
        self.gone = False
        self.deadline_at: float | None = None  # time.monotonic() when the batch's time is up

    def attach(self, loop: asyncio.AbstractEventLoop, on_stop: Callable[[], None]) -> None:
        """Watch the socket on ``loop``; ``on_stop`` runs once when the host says stop."""
        self._on_stop = on_stop
        loop.add_reader(self._sock.fileno(), self._readable)
        if self.stopped:
            on_stop()

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._sock.fileno())

    def take(self) -> int:
        """The next chunk number the host hands this worker (blocking: the host answers at
        once); :data:`_NO_MORE` when there is none, the host is gone, or (a host that does not
        answer) the batch's time is up."""
        if self.gone:
            return _NO_MORE
        try:
            send(self._sock, ("take",))
        except OSError:
            self.host_gone()
            return _NO_MORE
        while True:
            while self._inbox:
                message = self._inbox.popleft()
                if message[0] == "chunk":
                    return _NO_MORE if message[1] is None else int(message[1])
                self._dispatch(message)
            if not self._pump(wait=True):
                return _NO_MORE

    def report(self, outcome: dict[str, Any]) -> None:
        """Send the outcome (nothing happens when the host is gone)."""
        with contextlib.suppress(OSError):
            send(self._sock, ("outcome", outcome))

    def host_gone(self) -> None:
        """The host closed its end or is gone: stop."""
        self.gone = True
        self._stop()

    def _readable(self) -> None:
        if self._pump(wait=False):
            while self._inbox:
                self._dispatch(self._inbox.popleft())

    def _pump(self, *, wait: bool) -> bool:
        """Read what has arrived into the inbox (with ``wait``, block until something has);
        ``False`` at end of file."""
        if wait:
            left = None if self.deadline_at is None else self.deadline_at - time.monotonic()
            ready, _, _ = select.select(
                [self._sock], [], [], None if left is None else max(left, 0)
            )
            if not ready:
                return False  # out of time: the runner's own deadline ends the batch
        try:
            data = self._sock.recv(1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self.host_gone()
            return False
        self._inbox.extend(self._frames.feed(data))
        return True

    def _dispatch(self, message: Any) -> None:
        if message[0] == "stop":
            self._stop()

    def _stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            if self._on_stop is not None:
                self._on_stop()


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
    from dspex.batch.progress import ProgressTracker
    from dspex.config import Settings
    from dspex.runtime import Runtime
    from dspex.store import open_store

    loop = asyncio.get_running_loop()
    options: dict[str, Any] = {"schema": spec.schema} if spec.schema else {}
    store = open_store(spec.database_url, **options)
    settings = Settings.model_validate(spec.settings)
    runtime = Runtime(settings, store, backends=spec.backends, worker_id=None)
    async with runtime as rt:
        record = await rt.store.get_program(spec.program, spec.version)
        program = rt._ctx.programs.get(record, spec.backend)
        await rt.engine.prepare(program, strategy=spec.options.get("strategy"))
        stats = StatsCollector()
        deadline = spec.options["deadline"]
        if deadline is not None:
            link.deadline_at = time.monotonic() + deadline
        items = read_chunks(Path(spec.input_path), spec.options["chunk_size"], link.take)
        runner_options = RunnerOptions(
            **{**spec.options, "worker_id": worker_id(spec.options["worker_id"], os.getpid())}
        )
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


def _cancel_once(task: asyncio.Task[Any]) -> None:
    # A second cancel would interrupt the runner's shielded shutdown: the run would end while
    # that shutdown still writes, and the runtime would close the store under it.
    if not task.done() and not task.cancelling():
        task.cancel()

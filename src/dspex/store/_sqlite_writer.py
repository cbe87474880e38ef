"""One writer thread per SQLite database: queued write jobs, committed together (group commit).

SQLite has one writer at a time, and a transaction through SQLAlchemy + aiosqlite costs far
more than the SQL in it. So the SQL store hands its hot writes to this writer instead: a thread
owning a stdlib :mod:`sqlite3` connection, fed by a queue. Each job is a small function over
that connection. The jobs an event loop submits in one turn go to the thread together at the
end of that turn (one wake-up of the thread, not one per job). The thread takes every job
waiting, runs them all in ONE transaction (each
inside its own SAVEPOINT, so a job that fails is undone without touching the others; a job
alone, or one that runs a single statement, needs none: SQLite undoes a failed statement
whole), commits once, then resolves the group's futures with one wake-up of each event loop
that submitted some of them.

Jobs must be independent: a job sees the effects of the jobs before it in its group, but its
outcome never depends on whether they succeed. A failed COMMIT fails every job of the group,
and none of their writes remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from dspex.errors import StorageError
from dspex.store._sqlite_setup import is_busy, set_up

__all__ = ["SqliteWriter"]

T = TypeVar("T")

# A group this large already amortises the commit; a cap keeps one group's latency bounded.
MAX_GROUP = 4096


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    atomic: bool


class SqliteWriter:
    """The single writer of one SQLite file in this process.

    Args:
        path: the database file (or a ``file:`` URI, with ``uri``).
        busy_timeout_ms: how long to wait for the write lock held by another process.
        uri: open ``path`` as a URI.
    """

    def __init__(self, path: str, *, busy_timeout_ms: int = 30_000, uri: bool = False) -> None:
        self._path = path
        self._uri = uri
        self._busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._pending: dict[asyncio.AbstractEventLoop, list[_Job]] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.commits = 0
        """Transactions committed so far (a test hook: shared commits show up here)."""
        self.jobs = 0
        """Jobs run so far, successful or not."""

    def submit(
        self, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False
    ) -> asyncio.Future[T]:
        """Queue ``fn`` to run in the writer's next transaction; await the result.

        ``atomic``: ``fn`` runs one statement, so it needs no savepoint of its own (SQLite
        undoes a statement that fails whole, and the transaction goes on).

        Raises:
            StorageError: the writer is closed.
        """
        if self._closed:
            raise StorageError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._ensure_started()
        job = _Job(fn, future, loop, atomic)
        pending = self._pending.get(loop)
        if pending is None:
            self._pending[loop] = [job]
            loop.call_soon(self._hand_over, loop)
        else:
            pending.append(job)
        return future

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Give the thread what ``loop`` submitted this turn."""
        jobs = self._pending.pop(loop, None)
        if jobs:
            self._queue.put(jobs)

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, atomic: bool = False) -> T:
        """Run ``fn`` in the writer and return what it returns (errors become StorageError)."""
        return await self.submit(fn, atomic=atomic)

    async def close(self) -> None:
        """Finish every queued job, then stop the thread and close its connection."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        for loop in list(self._pending):
            self._hand_over(loop)
        self._queue.put(None)
        await asyncio.to_thread(thread.join)

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="dspex-sqlite-writer", daemon=True)
                thread.start()
                self._thread = thread

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_ms / 1000.0,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=1024,  # multi-row statements come in up to 250 sizes each
            uri=self._uri,
        )
        try:
            set_up(conn, self._busy_timeout_ms)
        except BaseException:
            conn.close()
            raise
        # The write lock is waited for by _begin, in steps of a fraction of a millisecond:
        # SQLite's own busy handler sleeps 1, 2, 5, 10… up to 100 ms between tries, far longer
        # than another process's group commit holds the lock (worker processes of one batch
        # take turns many times a second).
        conn.execute("PRAGMA busy_timeout=0")
        return conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, retried while another connection holds the write lock."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000.0
        pause = _FIRST_PAUSE
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                group = list(first)
                while len(group) < MAX_GROUP:
                    try:
                        jobs = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if jobs is None:
                        stop = True
                        break
                    group.extend(jobs)
                if conn is None:
                    try:
                        conn = self._connect()
                    except sqlite3.Error as exc:
                        # Maybe only for now (a locked or missing file): the next group retries.
                        self._fail(group, exc)
                        continue
                self._run_group(conn, group)
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _fail(group: list[_Job], exc: BaseException) -> None:
        _resolve_all([(job, exc, False) for job in group])

    def _run_group(self, conn: sqlite3.Connection, group: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, bool]] = []
        try:
            self._begin(conn)
        except sqlite3.Error as exc:
            self._fail(group, exc)
            return
        if len(group) == 1:
            self._run_alone(conn, group[0])
            return
        for job in group:
            self.jobs += 1
            if job.future.cancelled():
                continue
            if job.atomic:
                try:
                    outcomes.append((job, job.fn(conn), True))
                except Exception as exc:
                    outcomes.append((job, exc, False))
                continue
            try:
                conn.execute("SAVEPOINT job")
                value = job.fn(conn)
                conn.execute("RELEASE job")
                outcomes.append((job, value, True))
            except Exception as exc:
                outcomes.append((job, exc, False))
                try:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                except sqlite3.Error as undo:  # pragma: no cover - the transaction is gone
                    self._abandon(conn, group, undo)
                    return
        if self._commit(conn, group):
            _resolve_all(outcomes)

    def _run_alone(self, conn: sqlite3.Connection, job: _Job) -> None:
        """A group of one job: its transaction is its savepoint (two statements fewer, and
        every statement makes this thread take the GIL back from a busy event loop)."""
        self.jobs += 1
        if job.future.cancelled():
            conn.execute("ROLLBACK")
            return
        try:
            value = job.fn(conn)
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            _resolve_all([(job, exc, False)])
            return
        if self._commit(conn, [job]):
            _resolve_all([(job, value, True)])

    def _commit(self, conn: sqlite3.Connection, group: list[_Job]) -> bool:
        """COMMIT the group's transaction; when that fails, undo it and fail every job."""
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abandon(conn, group, exc)
            return False
        self.commits += 1
        return True

    @staticmethod
    def _abandon(conn: sqlite3.Connection, group: list[_Job], exc: sqlite3.Error) -> None:
        """The group's transaction failed as a whole: undo it and fail every job."""
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        SqliteWriter._fail(group, exc)


_FIRST_PAUSE = 0.0001
_LAST_PAUSE = 0.002


def _resolve_all(outcomes: list[tuple[_Job, Any, bool]]) -> None:
    """Resolve each job's future on its own loop: one wake-up per loop, not one per job (a
    wake-up is a write to the loop's self-pipe and a turn of the loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, bool]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the submitting loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve, mine)


def _resolve(outcomes: list[tuple[_Job, Any, bool]]) -> None:
    for job, value, ok in outcomes:
        future = job.future
        if future.done():  # cancelled while queued
            continue
        if ok:
            future.set_result(value)
        elif isinstance(value, sqlite3.Error):
            error = StorageError(f"database error: {value}")
            error.__cause__ = value
            future.set_exception(error)
        else:
            future.set_exception(value)

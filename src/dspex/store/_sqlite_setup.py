"""How every SQLite connection dspex opens is set up (the engine's pool and the writer thread).

The busy timeout comes first, so every statement after it waits for a lock instead of failing.
WAL (and ``auto_vacuum``, which only a new, empty file takes) is set only on a file that is not
in WAL mode yet: asking for it again is a no-op that can still fail with "database is locked"
without waiting, for instance while another connection recovers the WAL of a process that was
killed. What still finds the database busy while the connection is set up is tried again, with
short pauses, until the busy timeout has passed.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["is_busy", "set_up", "set_up_async"]

_FIRST_PAUSE = 0.001
_LAST_PAUSE = 0.05


def is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` is SQLite's "database is locked/busy" (worth trying again)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc)
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def _base(busy_timeout_ms: int) -> tuple[str, ...]:
    return (
        f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
        "PRAGMA synchronous=NORMAL",
        "PRAGMA foreign_keys=ON",
    )


_TO_WAL = ("PRAGMA auto_vacuum=INCREMENTAL", "PRAGMA journal_mode=WAL")


def set_up(conn: sqlite3.Connection, busy_timeout_ms: int, *, read_only: bool = False) -> None:
    """Set up a stdlib connection (blocking: waits with ``time.sleep`` while busy)."""
    deadline = time.monotonic() + busy_timeout_ms / 1000.0

    def run(sql: str) -> list[Any]:
        pause = _FIRST_PAUSE
        while True:
            try:
                return conn.execute(sql).fetchall()
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)

    for sql in _base(busy_timeout_ms):
        run(sql)
    if not read_only and _mode(run("PRAGMA journal_mode")) != "wal":
        for sql in _TO_WAL:
            run(sql)


async def set_up_async(
    execute: Callable[[str], Awaitable[list[Any]]],
    busy_timeout_ms: int,
    *,
    read_only: bool = False,
) -> None:
    """Set up a connection through ``execute`` (one statement, its rows), waiting with
    ``asyncio.sleep`` while busy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + busy_timeout_ms / 1000.0

    async def run(sql: str) -> list[Any]:
        pause = _FIRST_PAUSE
        while True:
            try:
                return await execute(sql)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or loop.time() >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, _LAST_PAUSE)

    for sql in _base(busy_timeout_ms):
        await run(sql)
    if not read_only and _mode(await run("PRAGMA journal_mode")) != "wal":
        for sql in _TO_WAL:
            await run(sql)


def _mode(rows: list[Any]) -> str:
    return str(rows[0][0]).lower() if rows else ""

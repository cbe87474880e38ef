"""Every SQLite connection dspex opens is set up the same way, and a busy database makes the set-up
wait (up to the busy timeout) instead of failing: a resume right after a killed run used to fail
with "database is locked" while the WAL of the dead process was recovered."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from dspex.store import SqlStore
from dspex.store._sqlite_setup import is_busy, set_up, set_up_async


def _traced(path: Path) -> tuple[sqlite3.Connection, list[str]]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    return conn, statements


def _mode(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def test_a_new_file_is_put_in_wal_mode_with_the_busy_timeout_first(tmp_path: Path) -> None:
    conn, statements = _traced(tmp_path / "new.db")
    set_up(conn, 1234)
    conn.close()
    assert statements[0] == "PRAGMA busy_timeout=1234"
    assert "PRAGMA journal_mode=WAL" in statements
    assert "PRAGMA foreign_keys=ON" in statements
    assert _mode(tmp_path / "new.db") == "wal"


def test_a_file_in_wal_mode_already_is_not_asked_again(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    set_up(sqlite3.connect(path, isolation_level=None), 1000)
    conn, statements = _traced(path)
    set_up(conn, 1000)
    conn.close()
    assert "PRAGMA journal_mode=WAL" not in statements
    assert "PRAGMA auto_vacuum=INCREMENTAL" not in statements
    assert "PRAGMA journal_mode" in statements  # read, not set


def test_a_read_only_connection_leaves_the_journal_mode_alone(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    sqlite3.connect(path).close()
    conn, statements = _traced(path)
    set_up(conn, 1000, read_only=True)
    conn.close()
    assert not any("journal_mode" in s for s in statements)
    assert _mode(path) == "delete"


def _hold_exclusive(path: Path, seconds: float, held: threading.Event) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    held.set()
    time.sleep(seconds)
    other.execute("COMMIT")
    other.close()


def test_set_up_waits_for_a_lock_held_elsewhere(tmp_path: Path) -> None:
    path = tmp_path / "held.db"
    sqlite3.connect(path).close()
    held = threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(path, 0.3, held))
    holder.start()
    held.wait()
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    started = time.monotonic()
    set_up(conn, 5000)
    waited = time.monotonic() - started
    holder.join()
    conn.close()
    assert waited >= 0.2
    assert _mode(path) == "wal"


def test_set_up_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "stuck.db"
    sqlite3.connect(path).close()
    held = threading.Event()
    holder = threading.Thread(target=_hold_exclusive, args=(path, 1.0, held))
    holder.start()
    held.wait()
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            set_up(conn, 100)
    finally:
        conn.close()
        holder.join()


async def test_the_async_set_up_retries_what_finds_the_database_busy(tmp_path: Path) -> None:
    path = tmp_path / "async.db"
    calls: list[str] = []
    busy_left = 3

    async with aiosqlite.connect(path) as conn:

        async def execute(sql: str) -> list[Any]:
            nonlocal busy_left
            calls.append(sql)
            if sql.startswith("PRAGMA journal_mode=") and busy_left:
                busy_left -= 1
                raise sqlite3.OperationalError("database is locked")
            return list(await conn.execute_fetchall(sql))

        await set_up_async(execute, 5000)
    assert calls.count("PRAGMA journal_mode=WAL") == 4  # three busy answers, then done
    assert _mode(path) == "wal"


async def test_the_async_set_up_raises_what_is_not_busy(tmp_path: Path) -> None:
    async def execute(sql: str) -> list[Any]:
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        await set_up_async(execute, 5000)


def test_is_busy_knows_locked_and_busy_only() -> None:
    assert is_busy(sqlite3.OperationalError("database is locked"))
    assert not is_busy(sqlite3.OperationalError("no such table: x"))
    locked = sqlite3.OperationalError("whatever")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert is_busy(locked)


async def test_the_store_reads_and_writes_through_connections_set_up_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    async with SqlStore(url) as store:
        assert (await store.list_executions()).items == []
    assert _mode(tmp_path / "store.db") == "wal"

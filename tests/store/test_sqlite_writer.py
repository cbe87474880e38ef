"""The SQLite writer: statements compiled from the tables, group commit, independent jobs."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dspex.errors import StorageError
from dspex.records import ExecutionStatus, FinishRequest
from dspex.store import SqlStore
from dspex.store import _sqlite_jobs as jobs
from dspex.store._sqlite_statements import MultiRow, Statements, statements
from dspex.store._sqlite_writer import SqliteWriter

WRITERS = 40


@pytest.fixture
async def lite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    async with SqlStore(f"sqlite:///{tmp_path}/dspex.db") as store:
        await store.put_program("qa", {}, "hash-1")
        yield store


def _writer(store: SqlStore) -> SqliteWriter:
    assert store._writer is not None
    return store._writer


def _every_statement() -> list[str]:
    compiled = statements()
    found = [compiled.guarded(ready, latest) for ready in (False, True) for latest in (False, True)]
    for name, member in vars(Statements).items():
        if not isinstance(member, functools.cached_property):
            continue
        value = getattr(compiled, name)
        if isinstance(value, MultiRow):
            found.extend(value.sql(rows) for rows in (1, 2, 3))
        else:
            found.append(value)
    return found


async def test_every_statement_fits_the_migrated_schema(lite_store: SqlStore) -> None:
    every = _every_statement()
    assert len(every) > 20

    def explain(conn: sqlite3.Connection) -> int:
        for sql in every:
            # EXPLAIN compiles the statement (every table and column must exist) without running it.
            conn.execute(f"EXPLAIN {sql}", [None] * sql.count("?")).fetchall()
        return len(every)

    assert await _writer(lite_store).run(explain) == len(every)


async def test_concurrent_finishes_share_transactions(lite_store: SqlStore) -> None:
    started = [
        await lite_store.start_execution("qa", 1, {"i": i}, worker_id="w", lease_seconds=30)
        for i in range(WRITERS)
    ]
    before = _writer(lite_store).commits
    finished = await asyncio.gather(
        *(
            lite_store.finish_execution(
                s.id, s.lease_token or "", ExecutionStatus.COMPLETED, duration_ms=1.0
            )
            for s in started
        )
    )
    assert {f.status for f in finished} == {ExecutionStatus.COMPLETED}
    assert _writer(lite_store).commits - before < WRITERS // 2
    assert (await lite_store.get_program("qa")).execution_count == WRITERS


async def _hold(writer: SqliteWriter) -> tuple[asyncio.Future[object], threading.Event]:
    """Occupy the writer with a job that waits for the returned gate; returns once it runs."""
    running, gate = threading.Event(), threading.Event()

    def blocker(conn: sqlite3.Connection) -> object:
        running.set()
        return gate.wait(5)

    held = writer.submit(blocker)
    assert await asyncio.to_thread(running.wait, 5)
    return held, gate


async def _grouped(writer: SqliteWriter, *jobs: jobs.Job) -> list[object]:
    """Run ``jobs`` as ONE group: they queue while a first job holds the writer."""
    held, gate = await _hold(writer)
    futures = [writer.submit(job) for job in jobs]
    gate.set()
    await held
    return list(await asyncio.gather(*futures, return_exceptions=True))


def _insert_breaker(name: str, fail: bool = False) -> jobs.Job:
    def job(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO breakers (backend, state, updated_at) VALUES (?, 'closed', ?)",
            (name, "2026-01-01 00:00:00.000000"),
        )
        if fail:
            raise RuntimeError(f"{name} failed midway")
        return name

    return job


async def test_a_failing_job_is_undone_without_touching_its_group(lite_store: SqlStore) -> None:
    writer = _writer(lite_store)
    before = writer.commits
    results = await _grouped(
        writer, _insert_breaker("a"), _insert_breaker("b", fail=True), _insert_breaker("c")
    )
    assert results[0] == "a"
    assert results[2] == "c"
    assert isinstance(results[1], RuntimeError)
    assert [b.backend for b in await lite_store.list_breakers()] == ["a", "c"]
    assert writer.commits - before == 2  # the blocker's group, then the three together


async def test_an_atomic_job_that_fails_leaves_its_group_and_its_own_write_undone(
    lite_store: SqlStore,
) -> None:
    writer = _writer(lite_store)

    def duplicate(conn: sqlite3.Connection) -> int:  # one statement, refused whole
        return conn.execute(
            "INSERT INTO breakers (backend, state, updated_at) VALUES"
            " ('x', 'closed', '2026-01-01 00:00:00.000000'),"
            " ('a', 'closed', '2026-01-01 00:00:00.000000')"
        ).rowcount

    held, gate = await _hold(writer)
    first = writer.submit(_insert_breaker("a"))
    refused = writer.submit(duplicate, atomic=True)
    after = writer.submit(_insert_breaker("c"))
    gate.set()
    await held
    results = await asyncio.gather(first, refused, after, return_exceptions=True)
    assert results[0] == "a"
    assert isinstance(results[1], StorageError)  # the second row broke the key: no row kept
    assert results[2] == "c"
    assert [b.backend for b in await lite_store.list_breakers()] == ["a", "c"]


async def test_the_jobs_of_one_loop_turn_share_one_transaction(lite_store: SqlStore) -> None:
    writer = _writer(lite_store)
    before = writer.commits
    names = [f"turn-{i}" for i in range(6)]
    futures = [writer.submit(_insert_breaker(name)) for name in names]  # no await between
    assert await asyncio.gather(*futures) == names
    assert writer.commits - before == 1


async def test_closing_runs_what_this_turn_submitted(tmp_path: Path) -> None:
    async with SqlStore(f"sqlite:///{tmp_path}/dspex.db") as store:
        writer = _writer(store)
        await writer.run(_insert_breaker("first"))
        late = writer.submit(_insert_breaker("late"))
        await writer.close()
        assert await late == "late"
    async with SqlStore(f"sqlite:///{tmp_path}/dspex.db") as again:
        assert [b.backend for b in await again.list_breakers()] == ["first", "late"]


async def test_a_group_wakes_its_loop_once(
    lite_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _writer(lite_store)
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    original = loop.call_soon_threadsafe

    def counted(callback: object, *args: object, **kwargs: object) -> object:
        wakeups.append(callback)
        return original(callback, *args, **kwargs)  # type: ignore[arg-type]

    held, gate = await _hold(writer)
    jobs_ = [writer.submit(_insert_breaker(name)) for name in "abcde"]
    monkeypatch.setattr(loop, "call_soon_threadsafe", counted)
    gate.set()
    await held
    assert await asyncio.gather(*jobs_) == list("abcde")
    assert len(wakeups) == 2  # the blocker's group, then the five jobs' group: once each


async def test_a_job_alone_that_fails_is_undone_and_the_writer_goes_on(
    lite_store: SqlStore,
) -> None:
    writer = _writer(lite_store)
    before = writer.commits
    with pytest.raises(RuntimeError, match="alone failed midway"):
        await writer.run(_insert_breaker("alone", fail=True))
    assert writer.commits == before  # rolled back as a whole: nothing committed
    assert await writer.run(_insert_breaker("next")) == "next"
    assert writer.commits == before + 1
    assert [b.backend for b in await lite_store.list_breakers()] == ["next"]


async def test_a_job_alone_cancelled_while_queued_never_runs(lite_store: SqlStore) -> None:
    writer = _writer(lite_store)
    held, gate = await _hold(writer)
    doomed = writer.submit(_insert_breaker("never"))
    doomed.cancel()
    gate.set()
    await held
    assert await writer.run(_insert_breaker("after")) == "after"
    assert [b.backend for b in await lite_store.list_breakers()] == ["after"]


def _orphan_step(conn: sqlite3.Connection) -> str:
    """A job whose writes pass but whose COMMIT fails: a deferred foreign-key violation."""
    conn.execute("PRAGMA defer_foreign_keys=ON")
    conn.execute(
        "INSERT INTO steps (execution_id, module, status, attempts, usage)"
        " VALUES ('missing', 'm', 'completed', 1, '{}')"
    )
    return "written"


async def test_a_failed_commit_fails_a_job_alone_and_keeps_nothing(lite_store: SqlStore) -> None:
    writer = _writer(lite_store)
    before = writer.commits
    with pytest.raises(StorageError, match="FOREIGN KEY"):
        await writer.run(_orphan_step)
    assert writer.commits == before
    assert await writer.run(_insert_breaker("after")) == "after"  # the writer goes on


async def test_a_failed_commit_fails_every_job_of_its_group(lite_store: SqlStore) -> None:
    writer = _writer(lite_store)
    results = await _grouped(writer, _insert_breaker("a"), _orphan_step)
    assert all(isinstance(r, StorageError) for r in results)
    assert await lite_store.list_breakers() == []  # the group's writes were undone together


async def test_database_errors_become_storage_errors(lite_store: SqlStore) -> None:
    with pytest.raises(StorageError, match="no such table") as caught:
        await _writer(lite_store).run(lambda conn: conn.execute("SELECT * FROM missing_table"))
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_a_job_cancelled_while_queued_never_runs(lite_store: SqlStore) -> None:
    writer = _writer(lite_store)
    held, gate = await _hold(writer)
    doomed = writer.submit(_insert_breaker("never"))
    doomed.cancel()
    kept = writer.submit(_insert_breaker("kept"))
    gate.set()
    await held
    assert await kept == "kept"
    assert [b.backend for b in await lite_store.list_breakers()] == ["kept"]


async def test_closing_finishes_every_queued_job(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/dspex.db")
    await store.initialize()
    writer = _writer(store)
    queued = [writer.submit(_insert_breaker(f"b{i}")) for i in range(5)]
    await store.close()
    assert [await f for f in queued] == [f"b{i}" for i in range(5)]
    with pytest.raises(StorageError, match="closed"):
        writer.submit(_insert_breaker("late"))
    await writer.close()  # closing twice is harmless


async def test_closing_an_unused_writer_is_immediate(tmp_path: Path) -> None:
    writer = SqliteWriter(str(tmp_path / "unused.db"))
    await writer.close()
    assert not (tmp_path / "unused.db").exists()


async def test_a_writer_that_cannot_open_its_database_fails_every_job(tmp_path: Path) -> None:
    writer = SqliteWriter(str(tmp_path / "missing" / "dir" / "x.db"))
    for _ in range(2):  # and keeps failing, trying again each time
        with pytest.raises(StorageError, match="unable to open"):
            await writer.run(lambda conn: 1)
    await writer.close()


async def test_two_stores_finishing_on_one_file_never_lose_a_count(tmp_path: Path) -> None:
    # Two writers on one file, like two processes: SQLite's lock serialises their groups.
    url = f"sqlite:///{tmp_path}/shared.db"
    async with SqlStore(url) as first, SqlStore(url) as second:
        await first.put_program("qa", {}, "h1")
        stores = [first if i % 2 else second for i in range(WRITERS)]
        started = [
            await s.start_execution("qa", 1, {}, worker_id="w", lease_seconds=30) for s in stores
        ]
        await asyncio.gather(
            *(
                s.finish_executions(
                    [FinishRequest(r.id, r.lease_token or "", ExecutionStatus.COMPLETED)]
                )
                for s, r in zip(stores, started, strict=True)
            )
        )
        assert (await second.get_program("qa")).execution_count == WRITERS


def test_timestamps_are_stored_as_naive_utc_with_microseconds() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert jobs.ts(datetime(2026, 1, 1, 12, tzinfo=plus_two)) == "2026-01-01 10:00:00.000000"
    assert jobs.ts(datetime(2026, 1, 1, 12, 0, 0, 5, tzinfo=UTC)) == "2026-01-01 12:00:00.000005"
    assert jobs.ts(None) is None


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(StorageError, match="naive"):
        jobs.ts(datetime(2026, 1, 1))


async def test_writer_timestamps_compare_in_time_order_with_sqlalchemy_ones(
    lite_store: SqlStore,
) -> None:
    # A lease written by the writer must expire by the same text comparison SQLAlchemy uses.
    started = await lite_store.start_execution("qa", 1, {}, worker_id="w", lease_seconds=1)
    assert started.lease_expires_at is not None
    later = started.lease_expires_at + timedelta(microseconds=1)
    expired = await lite_store.reap_expired_leases(later, dry_run=True)
    assert expired.failed == [started.id]
    assert (await lite_store.reap_expired_leases(started.lease_expires_at, dry_run=True)).total == 0


async def test_a_group_that_cannot_take_the_write_lock_fails_and_the_next_one_retries(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "locked.db")
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    writer = SqliteWriter(path, busy_timeout_ms=10)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StorageError, match="locked"):
            await writer.run(lambda conn: 1)
        other.execute("ROLLBACK")
        assert await writer.run(lambda conn: 2) == 2
    finally:
        await writer.close()
        other.close()


async def test_a_writer_that_cannot_connect_yet_retries_with_the_next_group(
    tmp_path: Path,
) -> None:
    # A fresh file is not in WAL mode yet, so switching to it needs the lock another holds.
    path = str(tmp_path / "fresh.db")
    other = sqlite3.connect(path, isolation_level=None)
    writer = SqliteWriter(path, busy_timeout_ms=10)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("CREATE TABLE t (x)")
        with pytest.raises(StorageError, match="locked"):
            await writer.run(lambda conn: 1)
        other.execute("COMMIT")
        assert await writer.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone())
    finally:
        await writer.close()
        other.close()


async def test_a_group_waits_for_a_write_lock_another_connection_releases(
    tmp_path: Path,
) -> None:
    # Another process's group commit holds the lock briefly: the writer polls in fractions of
    # a millisecond instead of SQLite's busy handler sleeps, and gets it once it is free.
    path = str(tmp_path / "shared.db")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE t (x)")
    writer = SqliteWriter(path, busy_timeout_ms=5_000)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")
        release = threading.Timer(0.02, lambda: other.execute("COMMIT"))
        release.start()
        count = await writer.run(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0])
        release.join()
        assert count == 1  # it ran after the other transaction committed
    finally:
        await writer.close()
        other.close()

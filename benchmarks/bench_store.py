"""Store write throughput on SQLite: how many finished executions per second one process records.

Scenarios, each on a fresh SQLite database with a program and a batch of N items fed and claimed
with ``add_and_claim_batch_items`` (groups of 256), as the batch runner feeds them:

- bulk finish: ``finish_executions`` in groups of 256, one step and one attempt per execution;
- concurrent finish: 256 tasks each calling ``finish_execution`` for their own items (the
  writer's group commit shares transactions between them);
- start + finish: 256 tasks each recording whole executions (``start_execution`` then
  ``finish_execution``), as the runtime does outside batches.

Peer: the same inserts/updates through raw stdlib ``sqlite3`` in one transaction per group of
256 (the floor for this schema, without any store logic).

Target (issue 6): the store absorbs ≥ 10,000 finished executions per second (bulk finish).
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import Report, finish, parse_args

GROUP = 256


def _step() -> Any:
    from dspex.records import StepRecord, StepStatus

    now = datetime.now(UTC)
    return StepRecord("answer", StepStatus.COMPLETED, now, now, 0.1, usage={"m": {"tokens": 3}})


def _attempt() -> Any:
    from dspex.records import AttemptOutcome, AttemptRecord

    now = datetime.now(UTC)
    return AttemptRecord("answer", 1, "mock", AttemptOutcome.SUCCEEDED, now, now)


async def _prepared(db: Path, n: int) -> tuple[Any, str, dict[int, tuple[str, str]], float]:
    from dspex.store import SqlStore

    store = SqlStore(f"sqlite:///{db}")
    await store.initialize()
    await store.put_program("qa", {}, "h")
    batch = await store.create_batch("qa", 1, {}, n)
    t = time.perf_counter()
    claimed: dict[int, tuple[str, str]] = {}
    for start in range(0, n, GROUP):
        items = [(i, {"question": f"q{i}"}) for i in range(start, min(n, start + GROUP))]
        claimed.update(
            await store.add_and_claim_batch_items(
                batch.id, "qa", 1, items, worker_id="w", lease_seconds=60
            )
        )
    return store, batch.id, claimed, time.perf_counter() - t


async def _bulk_finish(db: Path, n: int) -> tuple[float, float]:
    from dspex.records import ExecutionStatus, FinishRequest

    store, batch_id, claimed, feed_s = await _prepared(db, n)
    step, attempt = _step(), _attempt()
    requests = [
        FinishRequest(
            eid,
            token,
            ExecutionStatus.COMPLETED,
            outputs={"answer": "a"},
            duration_ms=1.0,
            steps=(step,),
            attempts=(attempt,),
        )
        for eid, token in claimed.values()
    ]
    t = time.perf_counter()
    for start in range(0, n, GROUP):
        assert all(await store.finish_executions(requests[start : start + GROUP]))
    elapsed = time.perf_counter() - t
    assert (await store.get_batch(batch_id)).completed == n
    await store.close()
    return n / elapsed, n / feed_s


async def _concurrent_finish(db: Path, n: int) -> float:
    from dspex.records import ExecutionStatus

    store, _, claimed, _ = await _prepared(db, n)
    step, attempt = _step(), _attempt()
    work = list(claimed.values())

    async def worker(k: int) -> None:
        for eid, token in work[k::GROUP]:
            await store.finish_execution(
                eid,
                token,
                ExecutionStatus.COMPLETED,
                outputs={"answer": "a"},
                duration_ms=1.0,
                steps=[step],
                attempts=[attempt],
            )

    t = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(GROUP)))
    elapsed = time.perf_counter() - t
    assert (await store.get_program("qa")).execution_count == n
    await store.close()
    return n / elapsed


async def _start_finish(db: Path, n: int) -> float:
    from dspex.records import ExecutionStatus
    from dspex.store import SqlStore

    store = SqlStore(f"sqlite:///{db}")
    await store.initialize()
    await store.put_program("qa", {}, "h")
    step, attempt = _step(), _attempt()

    async def worker(k: int) -> None:
        for i in range(k, n, GROUP):
            started = await store.start_execution(
                "qa", 1, {"question": f"q{i}"}, worker_id="w", lease_seconds=60
            )
            assert started.lease_token is not None
            await store.finish_execution(
                started.id,
                started.lease_token,
                ExecutionStatus.COMPLETED,
                outputs={"answer": "a"},
                duration_ms=1.0,
                steps=[step],
                attempts=[attempt],
            )

    t = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(GROUP)))
    elapsed = time.perf_counter() - t
    assert (await store.get_program("qa")).execution_count == n
    await store.close()
    return n / elapsed


async def _raw_sqlite(db: Path, n: int) -> float:
    """The peer: the same rows through stdlib sqlite3, one transaction per group."""
    from dspex.store import SqlStore

    async with SqlStore(f"sqlite:///{db}") as store:  # the migrated schema
        await store.put_program("qa", {}, "h")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    now = "2026-01-01 00:00:00.000000"
    ids = [str(uuid.uuid4()) for _ in range(n)]
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO executions (id, program, program_version, status, inputs, attempts,"
        " created_at, usage, lease_token) VALUES (?, 'qa', 1, 'running', '{}', 1, ?, '{}', 't')",
        [(i, now) for i in ids],
    )
    conn.execute("COMMIT")
    t = time.perf_counter()
    for start in range(0, n, GROUP):
        group = ids[start : start + GROUP]
        conn.execute("BEGIN IMMEDIATE")
        for eid in group:
            conn.execute(
                "UPDATE executions SET status = 'completed', outputs = ?, finished_at = ?,"
                " lease_token = NULL WHERE id = ? AND lease_token = 't' AND status = 'running'"
                " RETURNING program, program_version, batch_id",
                ('{"answer": "a"}', now, eid),
            ).fetchone()
        conn.executemany(
            "INSERT INTO steps (execution_id, module, status, attempts, usage)"
            " VALUES (?, 'answer', 'completed', 1, '{}')",
            [(e,) for e in group],
        )
        conn.executemany(
            "INSERT INTO attempts (execution_id, module, attempt, backend, outcome)"
            " VALUES (?, 'answer', 1, 'mock', 'succeeded')",
            [(e,) for e in group],
        )
        conn.execute(
            "UPDATE programs SET execution_count = execution_count + ? WHERE name = 'qa'",
            (len(group),),
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t
    conn.close()
    return n / elapsed


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 10_000 if args.quick else 50_000
    report = Report("bench_store")
    with tempfile.TemporaryDirectory(prefix="dspex-bench-store-") as tmp:
        root = Path(tmp)
        bulk, feed = asyncio.run(_bulk_finish(root / "bulk.db", n))
        concurrent = asyncio.run(_concurrent_finish(root / "concurrent.db", n))
        start_finish = asyncio.run(_start_finish(root / "start.db", n))
        raw = asyncio.run(_raw_sqlite(root / "raw.db", n))
    report.metrics.update(
        {
            "items": n,
            "bulk_finish_rows_per_s": round(bulk),
            "feed_and_claim_items_per_s": round(feed),
            "concurrent_finish_rows_per_s": round(concurrent),
            "start_and_finish_per_s": round(start_finish),
        }
    )
    report.peer.update({"name": "raw sqlite3, one transaction per 256", "rows_per_s": round(raw)})
    report.ratios["bulk_vs_raw"] = round(bulk / raw, 3)
    report.row("bulk finish_executions", f"{bulk:,.0f} rows/s", f"groups of {GROUP}")
    report.row("add and claim batch items", f"{feed:,.0f} items/s", "groups of 256")
    report.row("concurrent finish_execution", f"{concurrent:,.0f} rows/s", f"{GROUP} tasks")
    report.row("start + finish", f"{start_finish:,.0f} execs/s", f"{GROUP} tasks")
    report.row("peer: raw sqlite3", f"{raw:,.0f} rows/s", "same statements, no store")
    report.target("bulk_finish_rows_per_s", ">= 10000", bulk, bulk >= 10_000)
    report.target("concurrent_finish_rows_per_s", ">= 10000", concurrent, concurrent >= 10_000)
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())

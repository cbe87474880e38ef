"""Reaping expired executions, and the cost of a health report.

Reap: N executions running under leases that expired (inserted in bulk, then aged), reaped by
``Runtime.cleanup()`` (bulk statements in chunks of 1,000) on SQLite and on PostgreSQL (when the
server at ``DSPEX_TEST_POSTGRES_URL`` is reachable). Peer, measured in the same run: the naive
reaper, one query for the running executions + one conditional write (``finish_execution`` under
the lease token each holds) per expired one, on a tenth of N.

Health: ``await rt.health()`` (standard) in a warm process on SQLite, median and p95 of repeated
reports; and ``dspex health`` cold in a fresh process.

Targets: reaping 10,000 expired executions ≤ 2 s on each database; warm standard health ≤ 300 ms.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from _common import Report, finish, parse_args

POSTGRES = os.environ.get("DSPEX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _seed(url: str, n: int, **options: object) -> None:
    """N running executions whose leases expired an hour ago (bulk insert, no ORM loop)."""
    import sqlalchemy as sa

    from dspex.store import SqlStore
    from dspex.store.tables import executions

    store = SqlStore(url, auto_upgrade=True, **options)  # type: ignore[arg-type]
    async with store:
        await store.put_program("qa", {"modules": []}, "h")
        past = datetime.now(UTC) - timedelta(hours=1)
        rows = [
            {
                "id": str(uuid.uuid4()),
                "program": "qa",
                "program_version": 1,
                "status": "running",
                "inputs": {},
                "attempts": 1,
                "created_at": past,
                "started_at": past,
                "usage": {},
                "worker_id": "dead",
                "lease_token": uuid.uuid4().hex,
                "lease_expires_at": past,
            }
            for _ in range(n)
        ]
        async with store._tx(write=True) as conn:
            for start in range(0, n, 2000):
                await conn.execute(sa.insert(executions), rows[start : start + 2000])


async def _reap(url: str, n: int, **options: object) -> float:
    from dspex.actions.cleanup import cleanup
    from dspex.store import SqlStore

    await _seed(url, n, **options)
    async with SqlStore(url, **options) as store:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        report = await cleanup(store)
        elapsed = time.perf_counter() - t0
    assert report.lease_expired.count == n, report
    return elapsed


async def _naive(url: str, n: int, **options: object) -> float:
    """One query to find, then one conditional write per execution (what cleanup avoids)."""
    from dspex.records import ExecutionFilter, ExecutionStatus
    from dspex.store import SqlStore

    await _seed(url, n, **options)
    async with SqlStore(url, **options) as store:  # type: ignore[arg-type]
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        running = ExecutionFilter(statuses=[ExecutionStatus.RUNNING])
        for record in (await store.list_executions(running, limit=n)).items:
            expires = record.lease_expires_at
            if expires is not None and expires < now and record.lease_token is not None:
                await store.finish_execution(record.id, record.lease_token, ExecutionStatus.FAILED)
        return time.perf_counter() - t0


async def _pg_schema(create: bool, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES)
    try:
        verb = f'CREATE SCHEMA "{name}"' if create else f'DROP SCHEMA IF EXISTS "{name}" CASCADE'
        await conn.execute(verb)
    finally:
        await conn.close()


async def _postgres(fn, n: int) -> float | None:  # type: ignore[no-untyped-def]
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        await _pg_schema(True, name)
    except OSError:
        return None
    try:
        return float(await fn(POSTGRES, n, schema=name))
    finally:
        await _pg_schema(False, name)


async def _health(db: Path, repeats: int) -> list[float]:
    import dspex

    samples = []
    async with dspex.Runtime.open(f"sqlite:///{db}", cwd=db.parent) as rt:
        await rt.health()
        for _ in range(repeats):
            t0 = time.perf_counter()
            report = await rt.health()
            samples.append((time.perf_counter() - t0) * 1000.0)
            assert report.status == "healthy", report
    return samples


def _cold_health(cwd: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dspex")), "health", "--json"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    return elapsed


async def main() -> int:
    args = parse_args(__doc__ or "")
    n = 2_000 if args.quick else 10_000
    repeats = 20 if args.quick else 100
    report = Report("health")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        lite = await _reap(f"sqlite:///{base / 'reap.db'}", n)
        naive = await _naive(f"sqlite:///{base / 'naive.db'}", n // 10) * 10
        pg = await _postgres(_reap, n)
        samples = await _health(base / "health.db", repeats)
        cold = _cold_health(base)
    p50 = statistics.median(samples)
    p95 = sorted(samples)[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    report.metrics = {
        "executions": n,
        "reap_sqlite_s": round(lite, 4),
        "reap_postgres_s": round(pg, 4) if pg is not None else None,
        "health_warm_p50_ms": round(p50, 3),
        "health_warm_p95_ms": round(p95, 3),
        "health_cli_cold_s": round(cold, 3),
    }
    report.peer = {"naive_reap_sqlite_s_extrapolated": round(naive, 4)}
    report.ratios = {"naive_over_bulk_sqlite": round(naive / lite, 2) if lite else 0.0}
    report.row(f"reap {n} expired (SQLite)", f"{lite:.3f} s", f"naive ≈ {naive:.2f} s")
    if pg is not None:
        report.row(f"reap {n} expired (PostgreSQL)", f"{pg:.3f} s")
    report.row("health standard, warm p50", f"{p50:.2f} ms", f"p95 {p95:.2f} ms")
    report.row("dspex health, cold process", f"{cold:.2f} s")
    report.target("reap_sqlite", "<= 2 s", lite, lite <= 2.0)
    if pg is not None:
        report.target("reap_postgres", "<= 2 s", pg, pg <= 2.0)
    report.target("health_warm_p50_ms", "<= 300 ms", p50, p50 <= 300.0)
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

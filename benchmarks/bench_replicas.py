"""What a batch pays to be taken over by another replica: recorded before it runs, driven under
a lease.

A service replica submits batches ``recoverable``: every item is recorded (with its inputs)
before any runs, so another replica can complete the batch from the database alone if this one
dies. The peer is the same batch run the way ``dspex batch`` runs it (items recorded as they are
claimed), on the same PostgreSQL database and mock backend, in the same run: the contenders take
turns over several rounds and each keeps its median.

Needs PostgreSQL (``DSPEX_BENCH_POSTGRES_URL``, else ``DSPEX_TEST_POSTGRES_URL``, else
``postgresql://postgres@127.0.0.1:5432/test``); a database of its own is created and dropped.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
import uuid
from typing import Any

from _common import Report, finish, parse_args

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _server_url() -> str:
    return os.environ.get(
        "DSPEX_BENCH_POSTGRES_URL",
        os.environ.get("DSPEX_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )


async def _database(server: str) -> str:
    import asyncpg

    from dspex.store import SqlStore

    name = f"dspex_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = server.rsplit("/", 1)[0] + f"/{name}"
    async with SqlStore(url, auto_upgrade=True):
        pass
    return url


async def _drop(server: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def _measure(url: str, n: int, rounds: int) -> dict[str, list[float]]:
    import dspex
    from dspex.backends.mock import MockBackend

    backends = {"default": MockBackend("default", latency_ms=20)}
    runs: dict[str, list[float]] = {"plain": [], "recoverable": []}
    async with dspex.Runtime.open(url, backends=backends) as rt:
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        items = [{"question": f"question {i}?"} for i in range(n)]
        await rt.run_batch("qa", items[:50], max_concurrency=64)  # warm up
        for _ in range(rounds):
            for case in runs:
                t0 = time.perf_counter()
                result = await rt.run_batch(
                    "qa", items, max_concurrency=64, recoverable=case == "recoverable"
                )
                wall = time.perf_counter() - t0
                assert result.stats.completed == n, result.stats
                runs[case].append(n / wall)
    return runs


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 1_000 if args.quick else 5_000
    rounds = 2 if args.quick else 3
    server = _server_url()
    report = Report("bench_replicas")
    try:
        url = asyncio.run(_database(server))
    except OSError as exc:
        print(f"PostgreSQL is not reachable at {server}: {exc}", file=sys.stderr)
        return 1
    try:
        runs = asyncio.run(_measure(url, n, rounds))
    finally:
        asyncio.run(_drop(server, url))
    plain = statistics.median(runs["plain"])
    recoverable = statistics.median(runs["recoverable"])
    ideal = n / (n / 64 * 0.020)
    report.peer = {"plain_batch": {"items_per_s": plain, "runs": runs["plain"]}}
    report.metrics["recoverable_batch"] = {"items_per_s": recoverable, "runs": runs["recoverable"]}
    report.metrics["items"] = n
    report.metrics["ideal_items_per_s"] = ideal
    ratio = recoverable / plain
    report.ratios["recoverable_vs_plain"] = ratio
    report.row(
        f"plain batch, mock 20ms x{n} @64, PostgreSQL",
        f"{plain:.0f} items/s",
        f"median of {rounds}; ideal {ideal:.0f}",
    )
    report.row(
        "recoverable batch (service), same items",
        f"{recoverable:.0f} items/s",
        f"median of {rounds}; {ratio:.2f}x the plain batch",
    )
    report.target("recoverable_vs_plain", ">= 0.9", ratio, ratio >= 0.9)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

"""Fault benchmark: a recorded batch through a failover group whose two backends both fail 30%.

Two loopback OpenAI-compatible servers each answer a seeded 30% of requests with a fault drawn
uniformly from: 429 with ``Retry-After`` in seconds (0.2), 429 with ``Retry-After`` as an HTTP
date (up to 1 s), 500, 503, a hang past the LM's 0.4 s read timeout, an HTTP 200 whose body is
not JSON, and an HTTP 200 whose JSON is cut off halfway.

dspex: ``Runtime.run_batch`` on SQLite, one ``predict`` module on a ``failover`` coordinator group
over two ``dspy`` backends (DSPy's retries off; the group: 4 attempts, 0.02 s initial backoff;
breakers 50% of 20, open 0.5 s), 16 items at once, ``max_retries=3``. Target: every item
succeeds (200/200 with ``--quick``; 1,000 in the full run).

Peer, in the same run, on the primary server with the same fault mix: ``dspy.Predict`` on a
``dspy.LM`` with DSPy's own retries (``num_retries=3``, the same 0.4 s timeout), 16 at once.
DSPy has no failover, so the peer has one backend. Both print success rate, provider requests
and wall time; the failures are listed by error class.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, finish, parse_args
from tests.support.openai_server import OpenAIServer, Outcome, delay, malformed, status, truncated

from dspex.runtime import Runtime

KEY_ENV = "DSPEX_BENCH_FAULTS_KEY"
FAULT_RATE = 0.3
CONCURRENCY = 16
READ_TIMEOUT = 0.4
FAULTS: tuple[Outcome, ...] = (
    status(429, retry_after=0.2, label="429 retry-after seconds"),
    status(429, retry_after_date=1, label="429 retry-after date"),
    status(500),
    status(503),
    delay(5.0, label="hang"),
    malformed(),
    truncated(),
)
PROGRAM: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {
        "answer": {
            "kind": "predict",
            "signature": "question: str -> answer: str",
            "backend": "main",
        }
    },
}


def _config(primary: OpenAIServer, secondary: OpenAIServer) -> str:
    backends = "".join(
        f"""
[backends.{name}]
kind = "dspy"
model = "openai/test"
api_base = "{server.base_url}"
api_key_env = "{KEY_ENV}"
timeout = {READ_TIMEOUT}
"""
        for name, server in (("first", primary), ("second", secondary))
    )
    return f"""
default_backend = "main"
{backends}
[coordinators.main]
backends = ["first", "second"]
strategy = "failover"

[coordinators.main.retry]
max_attempts = 4
initial_interval = 0.02
backoff_factor = 2
max_interval = 0.2
jitter = 0.2
max_retry_after = 1

[breaker]
failure_rate_threshold = 0.5
minimum_calls = 10
window_size = 20
open_seconds = 0.5
"""


async def dspex_batch(report: Report, items: list[dict[str, str]]) -> None:
    with OpenAIServer() as primary, OpenAIServer() as secondary, tempfile.TemporaryDirectory() as d:
        primary.inject(FAULT_RATE, FAULTS, seed=11)
        secondary.inject(FAULT_RATE, FAULTS, seed=12)
        config = Path(d) / "dspex.toml"
        config.write_text(_config(primary, secondary))
        async with Runtime.open(f"sqlite:///{Path(d) / 'dspex.db'}", config=config) as rt:
            await rt.register(PROGRAM)
            await rt.initialize("qa")
            start = time.perf_counter()
            batch = await rt.run_batch("qa", items, max_concurrency=CONCURRENCY, max_retries=3)
            wall = time.perf_counter() - start
        requests = primary.request_count + secondary.request_count
        injected = primary.injected + secondary.injected
    stats = batch.stats
    report.metrics["dspex"] = {
        "items": len(items),
        "completed": stats.completed,
        "failed": stats.failed,
        "success_rate": stats.completed / len(items),
        "item_retries": stats.retries,
        "provider_requests": requests,
        "faults_injected": dict(injected),
        "failures_by_code": dict(stats.errors),
        "wall_s": wall,
    }
    report.row(
        "dspex: failover group, recorded batch",
        f"{stats.completed}/{len(items)} ok",
        f"{requests} requests, {injected.total()} faults, {stats.retries} item retries, "
        f"{wall:.2f} s",
    )
    if stats.errors:
        report.row("dspex: failures", str(sum(stats.errors.values())), str(dict(stats.errors)))
    report.target(
        "success_rate", "= 1.0", stats.completed / len(items), stats.completed == len(items)
    )


async def dspy_peer(report: Report, items: list[dict[str, str]]) -> None:
    import dspy

    with OpenAIServer() as server:
        server.inject(FAULT_RATE, FAULTS, seed=11)
        lm = dspy.LM(
            "openai/test",
            api_base=server.base_url,
            api_key="sk-loopback",
            num_retries=3,
            cache=False,
            timeout=READ_TIMEOUT,
        )
        predict = dspy.Predict("question: str -> answer: str")
        gate = asyncio.Semaphore(CONCURRENCY)
        failures: Counter[str] = Counter()

        async def one(item: dict[str, str]) -> bool:
            async with gate:
                try:
                    with dspy.context(lm=lm):
                        await predict.acall(**item)
                except Exception as exc:
                    failures[type(exc).__name__] += 1
                    return False
                return True

        start = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
        wall = time.perf_counter() - start
        succeeded = sum(t.result() for t in tasks)
        requests = server.request_count
        injected = server.injected.total()
    report.peer["dspy_lm_num_retries"] = {
        "items": len(items),
        "succeeded": succeeded,
        "success_rate": succeeded / len(items),
        "provider_requests": requests,
        "faults_injected": injected,
        "failures_by_class": dict(failures),
        "wall_s": wall,
    }
    report.row(
        "peer: dspy.LM(num_retries=3), one backend",
        f"{succeeded}/{len(items)} ok",
        f"{requests} requests, {injected} faults, {wall:.2f} s",
    )
    if failures:
        report.row("peer: failures", str(sum(failures.values())), str(dict(failures)))


async def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "fault benchmark")
    os.environ[KEY_ENV] = "sk-loopback"
    n = 200 if args.quick else 1_000
    items = [{"question": f"What is {i} + {i}?"} for i in range(n)]
    report = Report("faults")
    await dspex_batch(report, items)
    await dspy_peer(report, items)
    dspex_rate = report.metrics["dspex"]["success_rate"]
    peer_rate = report.peer["dspy_lm_num_retries"]["success_rate"]
    report.ratios["success_rate_dspex_over_dspy"] = dspex_rate / peer_rate if peer_rate else 0.0
    report.metrics["settings"] = {
        "fault_rate": FAULT_RATE,
        "faults": [f.name for f in FAULTS],
        "concurrency": CONCURRENCY,
        "read_timeout_s": READ_TIMEOUT,
        "seeds": {"primary": 11, "secondary": 12, "peer": 11},
    }
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

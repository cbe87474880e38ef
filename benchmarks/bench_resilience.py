"""Resilience benchmark: coordination overhead, breaker short-circuit, and retries under faults.

1. Overhead with the primary healthy: a zero-latency mock backend called directly, against the
   same call through a two-backend ``failover`` coordinator (retry loop, breaker bookkeeping,
   attempt record). Target: <= 0.5 ms added per call.
2. Primary down (its breaker open): calls through the coordinator go straight to the secondary.
   Added time against calling the secondary directly; target <= 1 ms, with no waiting (the slowest
   call is reported) and exactly one attempt per call.
3. Faults over real HTTP: 1,000 calls (200 with ``--quick``) of a DSPy ``Predict`` against the
   loopback OpenAI-compatible server, scripted with one deterministic outcome sequence in which
   30% of requests fail with a retryable error (429 and 503 alternating at random, each with
   ``Retry-After: 0.005``). dspex: ``DspyBackend`` (DSPy retries off) in a coordinator with
   ``max_attempts=10``, ``initial_interval=0.005``, ``backoff_factor=1``, ``jitter=0``.
   Peer, in the same run, on the same sequence: ``dspy.LM(num_retries=9)`` with its built-in
   retries (which wait the server's ``Retry-After`` hint, 5 ms, so both sides wait the same).
   Both print success rate, attempts (= provider requests) and total time.
4. The safe defaults on a healthy module call: one ``predict`` module on a zero-latency mock run
   by an engine with a runtime's defaults (30 s per-attempt timeout, 3 attempts, the backend's
   circuit breaker), against its peer in the same run, an engine with none (one plain attempt).
   Target: <= 50 µs added per module call (most of it the per-attempt timer of the timeout).
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, finish, parse_args
from tests.support.openai_server import OpenAIServer, Outcome, ok, status

from dspex.backends.base import PredictRequest
from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.mock import MockBackend
from dspex.errors import DspexError
from dspex.resilience import BreakerConfig, BreakerRegistry, Coordinator, RetryPolicy
from dspex.signatures.signature import Signature

QA = Signature.parse("question: str -> answer: str")
REQUEST = PredictRequest(signature=QA, inputs={"question": "What is 6 * 7?"})
FAILURE_RATE = 0.3
RETRY_AFTER = 0.005
MAX_ATTEMPTS = 10
KEY_ENV = "DSPEX_BENCH_LOOPBACK_KEY"


async def _per_call_us(call: Any, n: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` mean microseconds per sequential call."""
    for _ in range(min(n, 500)):  # warm caches (sampler plans, tenacity imports)
        await call()
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        for _ in range(n):
            await call()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


async def overhead_healthy(report: Report, n: int) -> None:
    primary, secondary = MockBackend("primary"), MockBackend("secondary")
    group = Coordinator("g", [primary, secondary], policy=RetryPolicy(max_attempts=3))
    direct = await _per_call_us(lambda: primary.complete(REQUEST), n)
    coordinated = await _per_call_us(lambda: group.complete(REQUEST), n)
    added = coordinated - direct
    report.metrics["healthy"] = {
        "calls": n,
        "direct_us": direct,
        "coordinated_us": coordinated,
        "added_us": added,
    }
    report.row("healthy: direct call", f"{direct:.1f} µs", "mock backend, 0 ms latency")
    report.row("healthy: through coordinator", f"{coordinated:.1f} µs", f"{n} calls, best of 5")
    report.row("healthy: added per call", f"{added:.1f} µs")
    report.target("healthy_added_ms", "<= 0.5", added / 1000, added / 1000 <= 0.5)


async def overhead_primary_down(report: Report, n: int) -> None:
    primary, secondary = MockBackend("primary"), MockBackend("secondary")
    registry = BreakerRegistry(BreakerConfig(minimum_calls=1, window_size=1, open_seconds=3600))
    breaker = registry.get("primary")
    permit, _ = breaker.try_acquire()
    assert permit is not None
    breaker.on_failure(permit)  # the primary's breaker is open for the whole run
    group = Coordinator("g", [primary, secondary], breakers=registry)
    direct = await _per_call_us(lambda: secondary.complete(REQUEST), n)
    coordinated = await _per_call_us(lambda: group.complete(REQUEST), n)
    slowest = 0.0
    single_attempt = True
    for _ in range(200):
        start = time.perf_counter()
        result = await group.complete(REQUEST)
        slowest = max(slowest, time.perf_counter() - start)
        single_attempt &= [a.backend for a in result.attempts] == ["secondary"]
    added = coordinated - direct
    report.metrics["primary_down"] = {
        "calls": n,
        "direct_secondary_us": direct,
        "coordinated_us": coordinated,
        "added_us": added,
        "slowest_call_ms": slowest * 1000,
        "primary_calls": primary.calls,
        "one_attempt_each": single_attempt,
    }
    report.row("primary down: direct secondary", f"{direct:.1f} µs")
    report.row("primary down: through coordinator", f"{coordinated:.1f} µs", "breaker open")
    report.row("primary down: added per call", f"{added:.1f} µs")
    report.row(
        "primary down: slowest call",
        f"{slowest * 1000:.2f} ms",
        f"primary called {primary.calls}x; one attempt each: {single_attempt}",
    )
    report.target("primary_down_added_ms", "<= 1", added / 1000, added / 1000 <= 1.0)
    report.target(
        "primary_down_no_waiting",
        "slowest call <= 5 ms, primary never called",
        slowest * 1000,
        slowest < 0.005 and primary.calls == 0 and single_attempt,
    )


def fault_schedule(calls: int, seed: int = 7) -> list[Outcome]:
    """One outcome per provider request: 30% retryable failures (429/503 with Retry-After)."""
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    for _ in range(calls * 3):  # more than any run can use: the rest would answer ok anyway
        if rng.random() < FAILURE_RATE:
            code = 429 if rng.random() < 0.5 else 503
            outcomes.append(status(code, retry_after=RETRY_AFTER))
        else:
            outcomes.append(ok())
    return outcomes


async def _run_calls(call: Any, calls: int) -> tuple[int, float]:
    succeeded = 0
    start = time.perf_counter()
    for _ in range(calls):
        try:
            await call()
            succeeded += 1
        except Exception:
            pass
    return succeeded, time.perf_counter() - start


async def faults_over_http(report: Report, calls: int) -> None:
    import dspy

    schedule = fault_schedule(calls)
    os.environ[KEY_ENV] = "sk-loopback"
    with OpenAIServer() as server:
        # dspex: DSPy's retries off, one coordinated retry loop
        server.script(*schedule)
        backend = DspyBackend(
            "loopback",
            model="openai/loopback-model",
            api_base=server.base_url,
            api_key_env=KEY_ENV,
        )
        policy = RetryPolicy(
            max_attempts=MAX_ATTEMPTS,
            initial_interval=RETRY_AFTER,
            backoff_factor=1.0,
            max_interval=RETRY_AFTER,
            jitter=0.0,
        )
        # a 30% failure rate must not open the only backend's breaker in this scenario
        breakers = BreakerRegistry(
            BreakerConfig(failure_rate_threshold=0.8, minimum_calls=20, window_size=50)
        )
        group = Coordinator("g", [backend], policy=policy, breakers=breakers)
        attempts = 0

        async def ours() -> None:
            nonlocal attempts
            try:
                result = await group.complete(REQUEST)
            except DspexError as exc:
                attempts += len(getattr(exc, "attempts", ()))
                raise
            attempts += len(result.attempts)

        ok_ours, time_ours = await _run_calls(ours, calls)
        requests_ours = server.request_count
        await group.aclose()

        # peer: dspy.LM with its built-in retries on the same outcome sequence
        server.reset()
        server.script(*schedule)
        lm = dspy.LM(
            "openai/loopback-model",
            api_base=server.base_url,
            api_key="sk-loopback",
            num_retries=MAX_ATTEMPTS - 1,
            cache=False,
        )
        predict = dspy.Predict(QA.to_dspy())

        async def peer() -> None:
            with dspy.context(lm=lm):
                await predict.acall(question="What is 6 * 7?")

        ok_peer, time_peer = await _run_calls(peer, calls)
        requests_peer = server.request_count

    report.metrics["faults"] = {
        "calls": calls,
        "failure_rate": FAILURE_RATE,
        "succeeded": ok_ours,
        "success_rate": ok_ours / calls,
        "attempts_recorded": attempts,
        "provider_requests": requests_ours,
        "total_s": time_ours,
        "per_call_ms": time_ours / calls * 1000,
    }
    report.peer["dspy_lm_num_retries"] = {
        "calls": calls,
        "num_retries": MAX_ATTEMPTS - 1,
        "succeeded": ok_peer,
        "success_rate": ok_peer / calls,
        "provider_requests": requests_peer,
        "total_s": time_peer,
        "per_call_ms": time_peer / calls * 1000,
    }
    report.ratios["faults_time_dspex_over_dspy"] = time_ours / time_peer
    report.row(
        "faults: dspex coordinator",
        f"{ok_ours}/{calls} ok",
        f"{attempts} attempts recorded, {requests_ours} provider requests, {time_ours:.2f} s",
    )
    report.row(
        "faults: dspy.LM num_retries",
        f"{ok_peer}/{calls} ok",
        f"{requests_peer} provider requests, {time_peer:.2f} s (peer)",
    )
    report.row("faults: time ratio dspex/dspy", f"{time_ours / time_peer:.2f}x")
    report.target("faults_success_rate", "= 1.0", ok_ours / calls, ok_ours == calls)
    report.target(
        "faults_attempts_equal_provider_requests",
        "attempts == requests",
        float(attempts),
        attempts == requests_ours,
    )


async def _engine_runs_us(
    engines: list[Any], program: Any, n: int, repeats: int = 7
) -> list[float]:
    """Best-of-``repeats`` mean microseconds per sequential one-module run of each engine,
    measured in alternation so that a busy moment of the machine hits them alike."""
    inputs = {"question": "What is 6 * 7?"}
    for engine in engines:
        for _ in range(min(n, 500)):
            await engine.run(program, inputs)
    best = [float("inf")] * len(engines)
    for _ in range(repeats):
        for i, engine in enumerate(engines):
            gc.collect()
            start = time.perf_counter()
            for _ in range(n):
                await engine.run(program, inputs)
            best[i] = min(best[i], (time.perf_counter() - start) / n * 1e6)
    return best


async def safe_defaults(report: Report, n: int) -> None:
    from dspex.config import DefaultsSettings
    from dspex.engine.engine import Engine
    from dspex.engine.program import Program

    program = Program.from_dict(
        {
            "name": "qa",
            "signature": "question: str -> answer: str",
            "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
        }
    )
    defaults = DefaultsSettings()
    bare = Engine({"default": MockBackend("default")})
    guarded = Engine(
        {"default": MockBackend("default")},
        retry=defaults.retry,
        timeout=defaults.attempt_timeout,
        breakers=BreakerRegistry(),
    )
    plain_us, safe_us = await _engine_runs_us([bare, guarded], program, n)
    added = safe_us - plain_us
    report.metrics["safe_defaults"] = {
        "runs": n,
        "plain_us": plain_us,
        "defaults_us": safe_us,
        "added_us": added,
        "ratio": safe_us / plain_us,
    }
    report.row("defaults: plain module call", f"{plain_us:.1f} µs", "1 attempt, no timeout")
    report.row(
        "defaults: with the safe defaults",
        f"{safe_us:.1f} µs",
        f"30 s timeout, 3 attempts, breaker; {safe_us / plain_us:.2f}x the plain run (peer)",
    )
    report.target("defaults_added_us", "<= 50", added, added <= 50.0)


async def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "resilience benchmark")
    report = Report("resilience")
    n = 2_000 if args.quick else 20_000
    await overhead_healthy(report, n)
    await overhead_primary_down(report, n)
    await safe_defaults(report, n // 10)
    await faults_over_http(report, 200 if args.quick else 1_000)
    report.metrics["settings"] = {
        "retry_after_s": RETRY_AFTER,
        "max_attempts": MAX_ATTEMPTS,
        "dspex_policy": "initial_interval=0.005, backoff_factor=1, jitter=0",
        "peer": f"dspy.LM(num_retries={MAX_ATTEMPTS - 1}) waits the Retry-After hint (0.005 s)",
        "overhead_timing": "best of 5 sequential runs",
    }
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))

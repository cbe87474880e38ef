"""What a response cache hit costs, against a miss to a loopback LM and against DSPy's own cache.

Ours: a one-module program on an ``openai`` backend pointed at the loopback responder (which
answers after ``--latency``, 20 ms by default: a fast LM), on a fresh SQLite file. N executions
of distinct questions with ``cache="read_write"`` (misses: each calls the responder and stores
its validated answer), then the same N again (hits: answered from the cache, nothing sent).
Each is a whole recorded ``rt.execute``: execution, step and counters are written either way.
The lookup itself (key and store read, what a hit adds to a call) is measured on its own too.

Peer, measured in the same run: ``dspy.Predict`` with ``dspy.LM(cache=True)`` on the same
responder, the same questions asked twice; the second round is DSPy's cache hit (its in-memory
cache in front of its disk cache; nothing recorded).

For scale, the same recorded ``rt.execute`` on an instant ``mock`` backend with the cache off:
a hit costs that plus the lookup.

Targets: a cache lookup (the cost a hit adds) ≤ 1 ms median; a whole recorded ``rt.execute``
answered from the cache ≤ 1 ms median.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Report, finish, parse_args
from _loopback_responder import start, stats, stop

SIGNATURE = "question: str -> answer: str"
SPEC: dict[str, Any] = {
    "name": "qa",
    "signature": SIGNATURE,
    "modules": {"answer": {"kind": "predict", "signature": SIGNATURE}},
}
LATENCY_S = 0.02


def _median_p95(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def _ours(base_url: str, n: int, warmup: int, tmp: Path) -> dict[str, list[float]]:
    import dspex
    from dspex.backends.base import PredictRequest

    (tmp / "dspex.toml").write_text(
        f'[backends.default]\nkind = "openai"\nbase_url = "{base_url}"\nmodel = "bench-model"\n'
        '[backends.mock]\nkind = "mock"\n'
    )
    times: dict[str, list[float]] = {"miss": [], "hit": [], "lookup": [], "baseline": []}
    async with dspex.Runtime.open(f"sqlite:///{tmp / 'bench.db'}", cwd=tmp) as rt:
        await rt.register(SPEC)
        await rt.initialize("qa")
        for i in range(warmup):
            await rt.execute("qa", {"question": f"warm {i}"}, cache="read_write")
            await rt.execute("qa", {"question": f"warm {i}"}, cache="read_write")
            await rt.execute("qa", {"question": f"warm {i}"}, backend="mock", cache="off")
        for label in ("miss", "hit"):
            for i in range(n):
                t = time.perf_counter()
                result = await rt.execute("qa", {"question": f"question {i}"}, cache="read_write")
                times[label].append((time.perf_counter() - t) * 1000.0)
                assert result.ok
                assert result.steps[0].cache_hit is (label == "hit")
        for i in range(n):  # the same recorded execute with an instant backend and no cache
            t = time.perf_counter()
            result = await rt.execute("qa", {"question": f"q {i}"}, backend="mock", cache="off")
            times["baseline"].append((time.perf_counter() - t) * 1000.0)
            assert result.ok
        program = await rt.load_program("qa")
        signature = program.module_signature("answer")
        backend = rt.engine.backends["default"]
        cache = rt.cache
        for i in range(n):
            request = PredictRequest(signature, {"question": f"question {i}"}, module="answer")
            t = time.perf_counter()
            found = await cache.lookup(cache.key(backend, request))
            times["lookup"].append((time.perf_counter() - t) * 1000.0)
            assert found is not None
    return times


def _peer(base_url: str, n: int, warmup: int) -> dict[str, list[float]]:
    import dspy

    lm = dspy.LM("openai/bench-model", api_base=base_url, api_key="bench", cache=True)
    predict = dspy.Predict(SIGNATURE)
    times: dict[str, list[float]] = {"miss": [], "hit": []}
    with dspy.context(lm=lm):
        for i in range(warmup):
            predict(question=f"peer warm {i}")
            predict(question=f"peer warm {i}")
        for label in ("miss", "hit"):
            for i in range(n):
                t = time.perf_counter()
                answer = predict(question=f"peer question {i}")
                times[label].append((time.perf_counter() - t) * 1000.0)
                assert answer.answer == "Paris"
    return times


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 100 if args.quick else 400
    warmup = 10 if args.quick else 30
    report = Report("bench_cache")
    with tempfile.TemporaryDirectory(prefix="dspex-bench-cache-") as tmp:
        # DSPy's disk cache goes to a directory of this run, not the user's
        os.environ["DSPY_CACHEDIR"] = str(Path(tmp) / "dspy-cache")
        proc, base_url = start(LATENCY_S)
        try:
            ours = asyncio.run(_ours(base_url, n, warmup, Path(tmp)))
            sent_ours = stats(base_url)["requests"]
            peer = _peer(base_url, n, warmup)
            sent_peer = stats(base_url)["requests"] - sent_ours
        finally:
            stop(proc)

    miss, miss_p95 = _median_p95(ours["miss"])
    hit, hit_p95 = _median_p95(ours["hit"])
    lookup, lookup_p95 = _median_p95(ours["lookup"])
    baseline, baseline_p95 = _median_p95(ours["baseline"])
    peer_miss, peer_miss_p95 = _median_p95(peer["miss"])
    peer_hit, peer_hit_p95 = _median_p95(peer["hit"])

    report.metrics.update(
        {
            "executions": n,
            "lm_latency_ms": LATENCY_S * 1000.0,
            "miss_median_ms": round(miss, 4),
            "miss_p95_ms": round(miss_p95, 4),
            "hit_median_ms": round(hit, 4),
            "hit_p95_ms": round(hit_p95, 4),
            "lookup_median_ms": round(lookup, 4),
            "lookup_p95_ms": round(lookup_p95, 4),
            "instant_backend_median_ms": round(baseline, 4),
            "hit_added_ms": round(hit - baseline, 4),
            "requests_sent": sent_ours,
        }
    )
    report.peer.update(
        {
            "name": "dspy.Predict + dspy.LM(cache=True), unrecorded",
            "calls": n,
            "miss_median_ms": round(peer_miss, 4),
            "hit_median_ms": round(peer_hit, 4),
            "hit_p95_ms": round(peer_hit_p95, 4),
            "requests_sent": sent_peer,
        }
    )
    report.ratios["hit_vs_peer_hit"] = round(hit / peer_hit, 3)
    report.ratios["lookup_vs_peer_hit"] = round(lookup / peer_hit, 3)
    report.ratios["hit_vs_miss"] = round(hit / miss, 3)
    report.row("miss: recorded execute", f"{miss:.3f} ms", f"median; p95 {miss_p95:.3f} ms")
    report.row("hit: recorded execute", f"{hit:.3f} ms", f"median; p95 {hit_p95:.3f} ms")
    report.row("hit: the lookup alone", f"{lookup:.3f} ms", f"median; p95 {lookup_p95:.3f} ms")
    report.row("instant mock, no cache", f"{baseline:.3f} ms", f"median; p95 {baseline_p95:.3f} ms")
    report.row("hit minus instant mock", f"{hit - baseline:.3f} ms", "what a hit adds, whole")
    report.row("peer miss: dspy.Predict", f"{peer_miss:.3f} ms", f"p95 {peer_miss_p95:.3f} ms")
    report.row("peer hit: dspy.Predict", f"{peer_hit:.3f} ms", f"p95 {peer_hit_p95:.3f} ms")
    report.row("hit / peer hit", f"{hit / peer_hit:.2f}x", "recorded vs unrecorded")
    report.row("lookup / peer hit", f"{lookup / peer_hit:.2f}x", "")
    report.row("hit / miss", f"{hit / miss:.3f}x", f"LM latency {LATENCY_S * 1000:.0f} ms")
    report.row("requests sent", f"{sent_ours}", f"peer {sent_peer}; 2×{n} calls each + warm-up")
    report.target("lookup_median_ms", "<= 1 ms", lookup, lookup <= 1.0)
    report.target("hit_median_ms", "<= 1 ms", hit, hit <= 1.0)
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())

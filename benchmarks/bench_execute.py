"""Overhead of one recorded execution, and cold start of the command line.

Overhead: a one-module program on the ``mock`` backend at zero latency, every execution fully
recorded (execution, step, attempt, counters) in a fresh SQLite database, N sequential
executions after a warm-up; median and p95. Peer, measured in the same run: calling
``dspy.Predict`` directly with ``dspy.utils.DummyLM`` on the same signature (nothing recorded).

Cold start: ``dspex --help`` and the first ``dspex run`` in a fresh process (subprocesses; the
database is prepared beforehand with ``dspex program register``/``init``).

Targets: median execution overhead ≤ 2 ms; ``dspex --help`` ≤ 0.5 s; first ``dspex run`` ≤ 3 s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Report, finish, parse_args

SIGNATURE = "question: str -> answer: str"
SPEC: dict[str, Any] = {
    "name": "qa",
    "signature": SIGNATURE,
    "modules": {"answer": {"kind": "predict", "signature": SIGNATURE}},
}
SPEC_YAML = (
    "name: qa\n"
    f"signature: '{SIGNATURE}'\n"
    "modules:\n"
    f"  answer: {{kind: predict, signature: '{SIGNATURE}'}}\n"
)
BIN = Path(sys.executable).parent


def _stats(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


async def _ours(n: int, warmup: int, db: Path) -> list[float]:
    import dspex
    from dspex.backends.mock import MockBackend

    samples: list[float] = []
    backends = {"default": MockBackend("default")}
    async with dspex.Runtime.open(f"sqlite:///{db}", backends=backends, cwd=db.parent) as rt:
        await rt.register(SPEC)
        info = await rt.initialize("qa")
        assert info.status == "ready", info.error
        for i in range(warmup):
            await rt.execute("qa", {"question": f"warm {i}"})
        for i in range(n):
            t = time.perf_counter()
            result = await rt.execute("qa", {"question": f"question {i}"})
            samples.append((time.perf_counter() - t) * 1000.0)
            assert result.status == "completed"
        recorded = await rt.get_program("qa")
        assert recorded.execution_count == n + warmup
    return samples


def _peer(n: int, warmup: int) -> list[float]:
    import dspy
    from dspy.utils import DummyLM

    lm = DummyLM([{"answer": f"answer {i}"} for i in range(n + warmup)])
    predict = dspy.Predict(SIGNATURE)
    samples: list[float] = []
    with dspy.context(lm=lm):
        for i in range(warmup):
            predict(question=f"warm {i}")
        for i in range(n):
            t = time.perf_counter()
            predict(question=f"question {i}")
            samples.append((time.perf_counter() - t) * 1000.0)
    return samples


def _timed(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-500:]}")
    return elapsed


def _cold_start(repeats: int) -> dict[str, float]:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "true", "HF_HUB_OFFLINE": "1"}
    env.pop("DSPEX_DATABASE_URL", None)
    env.pop("DSPEX_CONFIG", None)
    dspex_bin = str(BIN / "dspex")
    helps: list[float] = []
    runs: list[float] = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="dspex-bench-cold-") as tmp:
            cwd = Path(tmp)
            (cwd / "qa.yaml").write_text(SPEC_YAML)
            helps.append(_timed([dspex_bin, "--help"], cwd, env))
            _timed([dspex_bin, "program", "register", "qa.yaml"], cwd, env)
            _timed([dspex_bin, "program", "init", "qa"], cwd, env)
            runs.append(_timed([dspex_bin, "run", "qa", "-i", "question=hi"], cwd, env))
    return {"help_s": statistics.median(helps), "first_run_s": statistics.median(runs)}


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 300 if args.quick else 2000
    warmup = 50 if args.quick else 200
    n_peer = 300 if args.quick else 1000
    report = Report("bench_execute")

    with tempfile.TemporaryDirectory(prefix="dspex-bench-exec-") as tmp:
        ours = asyncio.run(_ours(n, warmup, Path(tmp) / "bench.db"))
    ours_median, ours_p95 = _stats(ours)
    peer = _peer(n_peer, 20)
    peer_median, peer_p95 = _stats(peer)
    cold = _cold_start(1 if args.quick else 3)

    report.metrics.update(
        {
            "executions": n,
            "median_ms": round(ours_median, 4),
            "p95_ms": round(ours_p95, 4),
            "cli_help_s": round(cold["help_s"], 3),
            "cli_first_run_s": round(cold["first_run_s"], 3),
        }
    )
    report.peer.update(
        {
            "name": "dspy.Predict + DummyLM, unrecorded",
            "calls": n_peer,
            "median_ms": round(peer_median, 4),
            "p95_ms": round(peer_p95, 4),
        }
    )
    report.ratios["median_vs_peer"] = round(ours_median / peer_median, 3)
    report.row(
        "recorded execution (SQLite)", f"{ours_median:.3f} ms", f"median; p95 {ours_p95:.3f} ms"
    )
    report.row(
        "peer: dspy.Predict + DummyLM", f"{peer_median:.3f} ms", f"median; p95 {peer_p95:.3f} ms"
    )
    report.row("ratio ours / peer", f"{ours_median / peer_median:.2f}x", "")
    report.row("dspex --help", f"{cold['help_s']:.3f} s", "fresh process")
    report.row("first dspex run", f"{cold['first_run_s']:.3f} s", "fresh process")
    report.target("median_execution_ms", "<= 2", ours_median, ours_median <= 2.0)
    report.target("cli_help_s", "<= 0.5", cold["help_s"], cold["help_s"] <= 0.5)
    report.target("cli_first_run_s", "<= 3", cold["first_run_s"], cold["first_run_s"] <= 3.0)
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())

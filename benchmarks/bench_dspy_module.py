"""``dspy`` module benchmark: the overhead per execution of a DSPy module run through dspex.

A forward-only module with two predictors (``draft`` then ``polish``) on a ``DummyLM`` (no
network, so the LM's own time is as small as it gets and the overhead shows), called N times in
a row:

- directly: ``module(question=...)`` under ``dspy.context(lm=lm)``, the way DSPy code calls it;
- directly, recorded: the same call on a pooled instance with what dspex records around it (its
  own usage tracker, the hooks DSPy calls back for each predictor call and LM call, the child
  steps built from them), without the engine: the part of the overhead that is DSPy's callback
  dispatch and dspex's recording;
- through dspex: ``Engine.run`` of a one-module program of ``kind: dspy``, which validates the
  inputs and outputs, takes a pooled instance, runs ``forward`` in the engine's thread helper
  with the recording above.

The three are measured in alternating rounds (the median round counts), in one process, in
wall time and in CPU time (the process's, all threads): on a shared machine the CPU time says
what the work costs, the wall time adds waiting for a core, which the thread hop of a sync
``forward`` pays twice. Target: at most 1 ms of overhead (wall) per execution.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import Report, finish, parse_args
from dspy.utils import DummyLM

from dspex.backends.dspy_backend import DspyBackend
from dspex.engine.dspy_modules import CallRecorder, ModulePool, recorded_lm
from dspex.engine.engine import Engine
from dspex.engine.program import Program

REF = "bench_dspy_module"
TARGET_MS = 1.0


class TwoSteps(dspy.Module):
    """Two predictors, ``forward`` only: the shape of most DSPy programs."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.polish = dspy.Predict("draft -> answer")

    def forward(self, question: str) -> Any:
        return self.polish(draft=self.draft(question=question).draft)


def _answers(n: int) -> list[dict[str, str]]:
    return [{"draft": "a draft"}, {"answer": "an answer"}] * n


def _spec() -> dict[str, Any]:
    signature = "question: str -> answer: str"
    return {
        "name": "two_steps",
        "signature": signature,
        "modules": {"m": {"kind": "dspy", "module": f"{REF}:TwoSteps", "signature": signature}},
    }


QUESTION = {"question": "What is six times seven?"}


def _direct(n: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``n`` direct calls."""
    module = TwoSteps()
    lm = DummyLM(_answers(n))
    started, cpu = time.perf_counter(), time.process_time()
    with dspy.context(lm=lm):
        for _ in range(n):
            module(**QUESTION)
    return time.perf_counter() - started, time.process_time() - cpu


def _recorded(pool: ModulePool, n: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``n`` direct calls with dspex's recording around each."""
    lm = recorded_lm(DummyLM(_answers(n)))
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        recorder = CallRecorder("m", "default")
        with dspy.context(lm=lm), dspy.track_usage() as tracker:
            recorder.tracker = tracker
            pool.call_sync(QUESTION, recorder)
        recorder.children()
        recorder.usage()
    return time.perf_counter() - started, time.process_time() - cpu


async def _through_dspex(engine: Engine, program: Program, n: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``n`` executions through the engine."""
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        result = await engine.run(program, QUESTION)
        if not result.ok:
            raise RuntimeError(f"the run failed: {result.error}")
    return time.perf_counter() - started, time.process_time() - cpu


def _ms(seconds: tuple[float, float], n: int) -> tuple[float, float]:
    return seconds[0] / n * 1000.0, seconds[1] / n * 1000.0


async def bench(report: Report, *, n: int, rounds: int) -> None:
    lm = DummyLM(_answers(n * (rounds + 1)))
    program = Program.from_dict(_spec())
    backend = DspyBackend("default", lm=lm)
    pool = ModulePool(TwoSteps())
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        warm = max(1, n // 10)
        await _through_dspex(engine, program, warm)  # build, pool, imports
        _direct(warm)
        _recorded(pool, warm)
        runs: dict[str, list[tuple[float, float]]] = {"direct": [], "recorded": [], "dspex": []}
        for _ in range(rounds):
            runs["direct"].append(_ms(_direct(n), n))
            runs["recorded"].append(_ms(_recorded(pool, n), n))
            runs["dspex"].append(_ms(await _through_dspex(engine, program, n), n))
        result = await engine.run(program, {"question": "one more"})
        children = len(result.step("m").children)
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    overhead = wall["dspex"] - wall["direct"]
    cpu_overhead = cpu["dspex"] - cpu["direct"]
    report.metrics.update(
        {
            "executions_per_round": n,
            "rounds": rounds,
            "direct_ms_per_call": round(wall["direct"], 4),
            "recorded_direct_ms_per_call": round(wall["recorded"], 4),
            "dspex_ms_per_execution": round(wall["dspex"], 4),
            "overhead_ms_per_execution": round(overhead, 4),
            "direct_cpu_ms_per_call": round(cpu["direct"], 4),
            "recorded_direct_cpu_ms_per_call": round(cpu["recorded"], 4),
            "dspex_cpu_ms_per_execution": round(cpu["dspex"], 4),
            "cpu_overhead_ms_per_execution": round(cpu_overhead, 4),
            "recording_cpu_ms_per_execution": round(cpu["recorded"] - cpu["direct"], 4),
            "engine_cpu_ms_per_execution": round(cpu["dspex"] - cpu["recorded"], 4),
            "child_steps_per_execution": children,
        }
    )
    report.peer["direct_dspy_ms_per_call"] = round(wall["direct"], 4)
    report.peer["direct_dspy_cpu_ms_per_call"] = round(cpu["direct"], 4)
    report.ratios["dspex_over_direct"] = round(wall["dspex"] / wall["direct"], 3)
    report.ratios["dspex_over_direct_cpu"] = round(cpu["dspex"] / cpu["direct"], 3)
    report.row(
        "direct module call",
        f"{wall['direct']:.3f} ms",
        f"cpu {cpu['direct']:.3f} ms; dspy.context(lm=...) + module()",
    )
    report.row(
        "direct, recorded",
        f"{wall['recorded']:.3f} ms",
        f"cpu {cpu['recorded']:.3f} ms; + usage tracker, callbacks, child steps",
    )
    report.row(
        "through dspex",
        f"{wall['dspex']:.3f} ms",
        f"cpu {cpu['dspex']:.3f} ms; Engine.run, {children} child steps",
    )
    report.row(
        "overhead",
        f"{overhead:.3f} ms",
        f"cpu {cpu_overhead:.3f} ms (recording {cpu['recorded'] - cpu['direct']:.3f},"
        f" engine {cpu['dspex'] - cpu['recorded']:.3f}); ratio {wall['dspex'] / wall['direct']:.2f}x",
    )
    report.target(
        "overhead_ms_per_execution", f"<= {TARGET_MS} ms", overhead, overhead <= TARGET_MS
    )


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "dspy module benchmark")
    report = Report("dspy_module")
    if args.quick:
        asyncio.run(bench(report, n=200, rounds=5))
    else:
        asyncio.run(bench(report, n=1_000, rounds=7))
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

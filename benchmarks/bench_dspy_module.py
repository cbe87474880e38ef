"""``dspy`` module benchmark: the overhead per execution of a DSPy module run through dspex.

A forward-only module with two predictors (``draft`` then ``polish``) on a ``DummyLM`` (no
network, so the LM's own time is as small as it gets and the overhead shows), called N times in
a row:

- directly: ``module(question=...)`` under ``dspy.context(lm=lm)``, the way DSPy code calls it;
- through dspex: ``Engine.run`` of a one-module program of ``kind: dspy``, which validates the
  inputs and outputs, takes a pooled instance, runs ``forward`` in the engine's thread helper
  with usage tracking and the callback that records each predictor call as a child step and each
  LM call as an attempt.

The two are measured in alternating rounds (the median round counts), in one process. Target:
at most 1 ms of overhead per execution.
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


def _direct(n: int) -> float:
    module = TwoSteps()
    lm = DummyLM(_answers(n))
    started = time.perf_counter()
    with dspy.context(lm=lm):
        for _ in range(n):
            module(question="What is six times seven?")
    return time.perf_counter() - started


async def _through_dspex(engine: Engine, program: Program, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        result = await engine.run(program, {"question": "What is six times seven?"})
        if not result.ok:
            raise RuntimeError(f"the run failed: {result.error}")
    return time.perf_counter() - started


async def bench(report: Report, *, n: int, rounds: int) -> None:
    lm = DummyLM(_answers(n * (rounds + 1)))
    program = Program.from_dict(_spec())
    backend = DspyBackend("default", lm=lm)
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        await _through_dspex(engine, program, max(1, n // 10))  # warm: build, pool, imports
        _direct(max(1, n // 10))
        direct: list[float] = []
        dspex: list[float] = []
        children = 0
        for _ in range(rounds):
            direct.append(_direct(n) / n * 1000.0)
            dspex.append(await _through_dspex(engine, program, n) / n * 1000.0)
        result = await engine.run(program, {"question": "one more"})
        children = len(result.step("m").children)
    direct_ms = statistics.median(direct)
    dspex_ms = statistics.median(dspex)
    overhead = dspex_ms - direct_ms
    report.metrics.update(
        {
            "executions_per_round": n,
            "rounds": rounds,
            "direct_ms_per_call": round(direct_ms, 4),
            "dspex_ms_per_execution": round(dspex_ms, 4),
            "overhead_ms_per_execution": round(overhead, 4),
            "child_steps_per_execution": children,
        }
    )
    report.peer["direct_dspy_ms_per_call"] = round(direct_ms, 4)
    report.ratios["dspex_over_direct"] = round(dspex_ms / direct_ms, 3)
    report.row("direct module call", f"{direct_ms:.3f} ms", "dspy.context(lm=...) + module()")
    report.row("through dspex", f"{dspex_ms:.3f} ms", f"Engine.run, {children} child steps")
    report.row("overhead", f"{overhead:.3f} ms", f"ratio {dspex_ms / direct_ms:.2f}x")
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

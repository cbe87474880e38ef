"""Optimize benchmark: ``dspex optimize --optimizer bootstrap_few_shot`` against plain DSPy.

The same trainset and valset, the same deterministic LM, the same metric (``exact_match``) and
settings (``max_bootstrapped_demos = max_labeled_demos = 8``), on two LM paths:

1. the loopback responder (``_loopback_responder.py``, its own process, 5 ms per answer) through
   ``dspy.LM`` over HTTP: the path a real program takes; it always answers "Paris", and the
   labels are "Paris" for even and "London" for odd examples, so bootstrapping has to choose.
   The target is measured here.
2. a ``DummyLM`` that answers by question (right for even questions, wrong for odd ones): no LM
   time at all, so what dspex's path costs per program run shows.

On each:

- plain DSPy: ``dspy.Evaluate`` of a ``dspy.Predict`` on the valset, ``dspy.BootstrapFewShot
  .compile`` on the trainset, ``dspy.Evaluate`` of the result — the scores dspex records too;
- dspex: ``Runtime.optimize`` on a SQLite database: the program presented as a ``dspy.Module``
  whose calls go through the engine and the backend chain, the run and its trials recorded, the
  result stored as a new version.

Both must select the same demos (checked: the benchmark fails otherwise). The two are measured in
alternating rounds (the median round counts), in one process, tuned as the ``dspex`` command
tunes its own (:func:`dspex.tune_process`). Target: dspex's wall time at most 1.2x the plain one.
The plain compile alone is printed too, for reference.

DSPy runs a ``DummyLM``'s async calls (dspex's path) in a worker thread, so each of dspex's LM
calls here pays a thread hand-off the plain, sync path does not; with a real LM client (async
HTTP) there is none.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import Report, finish, parse_args
from dspy.utils import DummyLM

import dspex
from dspex.backends.dspy_backend import DspyBackend
from dspex.metrics import exact_match

TARGET_RATIO = 1.2
MAX_DEMOS = 8
SPEC: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


HTTP_LATENCY = 0.005  # seconds the loopback responder waits before each answer
HTTP_MODEL = "openai/bench-model"
HTTP_KEY_ENV = "DSPEX_BENCH_OPTIMIZE_KEY"


def _rows(n: int, start: int = 0, *, labels: tuple[str, str] | None = None) -> list[dict[str, str]]:
    """Examples ``q00000…``; with ``labels`` the answer is the first for even, the second for
    odd questions (the loopback responder always answers the first), else ``a00000…``."""
    rows = []
    for i in range(start, start + n):
        answer = f"a{i:05d}" if labels is None else labels[i % 2]
        rows.append({"question": f"q{i:05d}", "answer": answer})
    return rows


def _dummy_lm(rows: list[dict[str, str]]) -> DummyLM:
    answers = {
        r["question"]: {"answer": r["answer"] if int(r["question"][1:]) % 2 == 0 else "wrong"}
        for r in rows
    }
    return DummyLM(answers)


def _plain(
    lm: Any, train: list[dict[str, str]], val: list[dict[str, str]]
) -> tuple[float, float, Any]:
    """Evaluate, compile, evaluate: (seconds, compile seconds, demos)."""
    trainset = [dspy.Example(**r).with_inputs("question") for r in train]
    valset = [dspy.Example(**r).with_inputs("question") for r in val]
    evaluate = dspy.Evaluate(devset=valset, metric=exact_match, num_threads=1)
    optimizer = dspy.BootstrapFewShot(
        metric=exact_match, max_bootstrapped_demos=MAX_DEMOS, max_labeled_demos=MAX_DEMOS
    )
    student = dspy.Predict("question -> answer")
    started = time.perf_counter()
    with dspy.context(lm=lm):
        evaluate(student)
        compile_started = time.perf_counter()
        compiled = optimizer.compile(student, trainset=trainset)
        compile_s = time.perf_counter() - compile_started
        evaluate(compiled)
    seconds = time.perf_counter() - started
    return seconds, compile_s, [dict(d.items()) for d in compiled.demos]


async def _dspex(
    rt: dspex.Runtime, train: list[dict[str, str]], val: list[dict[str, str]]
) -> tuple[float, Any, dspex.OptimizationInfo]:
    started = time.perf_counter()
    run = await rt.optimize(
        "qa", train, metric="exact_match", valset=val, version=1, seed=0, max_demos=MAX_DEMOS
    )
    seconds = time.perf_counter() - started
    program = await rt.load_program("qa", run.version)
    return seconds, program.to_dict()["modules"]["answer"]["demos"], run


async def _case(
    report: Report,
    key: str,
    title: str,
    *,
    plain_lm: Any,
    backend: DspyBackend,
    train: list[dict[str, str]],
    val: list[dict[str, str]],
    rounds: int,
) -> float:
    """Alternating rounds of both sides on one LM path; the dspex/plain ratio of the medians."""
    with tempfile.TemporaryDirectory() as tmp:
        backends = {"default": backend}
        async with dspex.Runtime.open(f"sqlite:///{tmp}/bench.db", backends=backends) as rt:
            await rt.register(SPEC)
            await _dspex(rt, train[:4], val[:2])  # warm: imports, the database, the engine
            await asyncio.to_thread(_plain, plain_lm(), train[:4], val[:2])
            plain_s: list[float] = []
            compile_s: list[float] = []
            dspex_s: list[float] = []
            for _ in range(rounds):
                seconds, compiled, plain_demos = await asyncio.to_thread(
                    _plain, plain_lm(), train, val
                )
                plain_s.append(seconds)
                compile_s.append(compiled)
                seconds, dspex_demos, run = await _dspex(rt, train, val)
                dspex_s.append(seconds)
                if dspex_demos != plain_demos:
                    raise SystemExit(
                        f"{title}: different demos selected:\n  dspy:  {plain_demos}\n"
                        f"  dspex: {dspex_demos}"
                    )
    plain_m, compile_m, dspex_m = (statistics.median(v) for v in (plain_s, compile_s, dspex_s))
    ratio = dspex_m / plain_m
    stats = run.stats
    report.metrics[key] = {
        "trainset": len(train),
        "valset": len(val),
        "rounds": rounds,
        "max_demos": MAX_DEMOS,
        "demos_selected": len(dspex_demos),
        "same_demos": True,
        "dspex_seconds": round(dspex_m, 4),
        "program_runs": stats["program_calls"],
        "lm_calls": stats["lm_calls"],
        "overhead_ms_per_program_run": round((dspex_m - plain_m) / stats["program_calls"] * 1e3, 4),
        "baseline_score": run.baseline_score,
        "score": run.score,
    }
    report.peer[key] = {
        "dspy_evaluate_compile_evaluate_seconds": round(plain_m, 4),
        "dspy_compile_seconds": round(compile_m, 4),
    }
    report.ratios[f"{key}_dspex_over_dspy"] = round(ratio, 3)
    report.row(f"{title}: plain dspy", f"{plain_m:.3f} s", "Evaluate + compile + Evaluate")
    report.row(f"{title}:   of which compile", f"{compile_m:.3f} s", "BootstrapFewShot.compile")
    report.row(
        f"{title}: dspex optimize",
        f"{dspex_m:.3f} s",
        f"{stats['program_calls']} program runs, {len(dspex_demos)} demos (same as DSPy)",
    )
    report.row(f"{title}: ratio", f"{ratio:.2f}x", f"scores {run.baseline_score} -> {run.score}")
    return ratio


async def bench(report: Report, *, n_train: int, n_val: int, rounds: int) -> None:
    import _loopback_responder as responder

    # 1. the loopback responder over HTTP: the LM path a real program takes (the target)
    os.environ[HTTP_KEY_ENV] = "sk-bench"
    labels = ("Paris", "London")  # the responder answers Paris: even examples are right
    train = _rows(n_train, labels=labels)
    val = _rows(n_val, start=n_train, labels=labels)
    proc, base_url = responder.start(HTTP_LATENCY)
    try:

        def http_lm() -> Any:
            return dspy.LM(HTTP_MODEL, api_base=base_url, api_key="sk-bench", cache=False)

        backend = DspyBackend(
            "default", model=HTTP_MODEL, api_base=base_url, api_key_env=HTTP_KEY_ENV
        )
        http = await _case(
            report,
            "http",
            f"HTTP {HTTP_LATENCY * 1000:g} ms",
            plain_lm=http_lm,
            backend=backend,
            train=train,
            val=val,
            rounds=rounds,
        )
    finally:
        responder.stop(proc)
    report.target("http_dspex_over_dspy", f"<= {TARGET_RATIO}x", http, http <= TARGET_RATIO)

    # 2. DummyLM: no LM time at all, so the per-run cost of dspex's path shows (and DSPy runs
    # a DummyLM's async calls, dspex's path, in a worker thread)
    train, val = _rows(n_train), _rows(n_val, start=n_train)
    await _case(
        report,
        "dummy",
        "DummyLM",
        plain_lm=lambda: _dummy_lm(train + val),
        backend=DspyBackend("default", lm=_dummy_lm(train + val)),
        train=train,
        val=val,
        rounds=rounds,
    )


def main() -> int:
    args = parse_args(__doc__.splitlines()[0] if __doc__ else "optimize benchmark")
    # the process is tuned as the `dspex` command tunes its own (both sides run in it)
    dspex.tune_process()
    report = Report("optimize")
    if args.quick:
        asyncio.run(bench(report, n_train=30, n_val=60, rounds=3))
    else:
        asyncio.run(bench(report, n_train=100, n_val=300, rounds=5))
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

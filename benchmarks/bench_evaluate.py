"""``dspex evaluate`` against ``dspy.Evaluate(num_threads=N)`` at its best N, same devset, same LM.

Both contenders answer the same devset (half the labels are the loopback server's answer, half
are not, so both must score 0.5) through an OpenAI-compatible loopback server
(``_loopback_responder.py``: its own process, 20 ms a reply, DSPy's ChatAdapter format):

- dspex: ``Runtime.evaluate`` with the metric ``answer_exact_match``, recording every item (its
  execution, steps and attempts, and its score) in SQLite, over the ``openai`` backend and over
  the ``dspy`` backend (``dspy.LM``), 64 items at once;
- DSPy: ``dspy.Evaluate(devset, metric=dspy.evaluate.answer_exact_match, num_threads=N)`` on a
  ``dspy.Predict("question -> answer")`` with the same ``dspy.LM``, for several N; the best is
  the peer.

Each contender runs in a fresh interpreter, in turns, for a few rounds; medians are compared.
The targets: dspex's items/s at least 1.0x the best ``dspy.Evaluate``'s, while recording, over
the ``openai`` backend and over ``dspy.LM`` (the peer's own LM path).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, finish, parse_args

MODEL = "bench-model"
KEY_ENV = "BENCH_EVALUATE_KEY"
CONCURRENCY = 64
LATENCY = 0.02
THREADS = (16, 32, 64)
QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def write_devset(path: Path, n: int) -> None:
    """``n`` items; the even ones are labelled with the server's answer (Paris)."""
    with path.open("w") as handle:
        for i in range(n):
            answer = "Paris" if i % 2 == 0 else "Lyon"
            handle.write(json.dumps({"question": f"question {i}?", "answer": answer}) + "\n")


def _measured(n: int, cpu0: float, t0: float, score: float) -> dict[str, Any]:
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "items_per_s": n / wall,
        "cpu_s_per_item": (_cpu() - cpu0) / n,
        "score": score,
    }


async def _dspex(kind: str, devset: Path, db: Path, n: int, base_url: str) -> dict[str, Any]:
    import dspex
    from dspex.config import Settings
    from dspex.store import open_store

    backend: Any
    if kind == "openai":
        backend = dspex.OpenAIBackend(
            "default", base_url=base_url, model=MODEL, max_connections=CONCURRENCY
        )
    else:
        os.environ[KEY_ENV] = "bench"
        backend = dspex.DspyBackend(
            "default", model=f"openai/{MODEL}", api_base=base_url, api_key_env=KEY_ENV
        )
    store = open_store(f"sqlite:///{db}")
    async with dspex.Runtime(Settings(), store, backends={"default": backend}) as rt:
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        warm = [{"question": f"warm {i}?"} for i in range(CONCURRENCY)]
        await rt.run_batch("qa", warm, max_concurrency=CONCURRENCY)
        # as the `dspex evaluate` command tunes its own process (for dspy.LM's worker threads when
        # the program calls a dspy.LM)
        dspex.tune_process(dspy_lm=await rt.calls_dspy_lm("qa"))
        cpu0, t0 = _cpu(), time.perf_counter()
        result = await rt.evaluate(
            "qa", devset, metric="answer_exact_match", max_concurrency=CONCURRENCY
        )
        measured = _measured(n, cpu0, t0, result.score or 0.0)
    await backend.aclose()
    assert result.n == n
    assert result.failed == 0, result
    return measured


def _dspy_evaluate(threads: int, devset: Path, n: int, base_url: str) -> dict[str, Any]:
    import dspy

    lm = dspy.LM(f"openai/{MODEL}", api_base=base_url, api_key="bench", cache=False)
    predict = dspy.Predict("question -> answer")
    rows = [json.loads(line) for line in devset.read_text().splitlines()]
    examples = [dspy.Example(**r).with_inputs("question") for r in rows]
    warm = [
        dspy.Example(question=f"warm {i}?", answer="Paris").with_inputs("question")
        for i in range(CONCURRENCY)
    ]
    with dspy.context(lm=lm):
        dspy.Evaluate(
            devset=warm,
            metric=dspy.evaluate.answer_exact_match,
            num_threads=threads,
            display_progress=False,
        )(predict)
        evaluate = dspy.Evaluate(
            devset=examples,
            metric=dspy.evaluate.answer_exact_match,
            num_threads=threads,
            display_progress=False,
        )
        cpu0, t0 = _cpu(), time.perf_counter()
        result = evaluate(predict)
        return _measured(n, cpu0, t0, float(result.score) / 100.0)


def _run_case(case: str) -> dict[str, Any]:
    n = int(os.environ["BENCH_N"])
    devset = Path(os.environ["BENCH_DEVSET"])
    base_url = os.environ["BENCH_BASE_URL"]
    kind, _, arg = case.partition(":")
    if kind == "dspy-evaluate":
        return _dspy_evaluate(int(arg), devset, n, base_url)
    db = Path(os.environ["BENCH_TMP"]) / f"{kind}-{time.monotonic_ns()}.db"
    return asyncio.run(_dspex(kind, devset, db, n, base_url))


def _case(case: str, **env: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__],
        env={**os.environ, "BENCH_EVALUATE_CASE": case, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r["items_per_s"])
    return {**ordered[len(ordered) // 2], "all_items_per_s": [r["items_per_s"] for r in runs]}


def main() -> int:
    case = os.environ.get("BENCH_EVALUATE_CASE")
    if case:
        print(json.dumps(_run_case(case)))
        return 0
    args = parse_args(__doc__ or "")
    import _loopback_responder as responder

    n, rounds = (400, 1) if args.quick else (2000, 3)
    cases = {
        "dspex evaluate, openai (recorded)": "openai",
        "dspex evaluate, dspy.LM (recorded)": "dspy",
        **{f"dspy.Evaluate({t})": f"dspy-evaluate:{t}" for t in THREADS},
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp:
        devset = Path(tmp) / "dev.jsonl"
        write_devset(devset, n)
        proc, base_url = responder.start(LATENCY)
        try:
            for _ in range(rounds):
                for name, c in cases.items():
                    runs[name].append(
                        _case(
                            c,
                            BENCH_N=str(n),
                            BENCH_DEVSET=str(devset),
                            BENCH_BASE_URL=base_url,
                            BENCH_TMP=tmp,
                        )
                    )
        finally:
            responder.stop(proc)
    measured = {name: _median(found) for name, found in runs.items()}
    peers = {k: v for k, v in measured.items() if k.startswith("dspy.Evaluate")}
    best_name = max(peers, key=lambda k: peers[k]["items_per_s"])
    best = peers[best_name]["items_per_s"]
    report = Report("evaluate")
    report.metrics = {
        "n": n,
        "rounds": rounds,
        "openai": measured["dspex evaluate, openai (recorded)"],
        "dspy": measured["dspex evaluate, dspy.LM (recorded)"],
    }
    report.peer = {**peers, "best": best_name}
    for name, m in measured.items():
        report.row(
            name,
            f"{m['items_per_s']:.0f} items/s",
            f"score {m['score']:.3f}, {m['cpu_s_per_item'] * 1000:.2f} ms CPU/item",
        )
    scores = {round(m["score"], 6) for m in measured.values()}
    for kind in ("openai", "dspy"):
        ratio = report.metrics[kind]["items_per_s"] / best
        report.ratios[f"{kind}_vs_best_dspy_evaluate"] = ratio
        report.row(f"ratio ({kind} / {best_name})", f"{ratio:.2f}x")
    ratio = report.ratios["openai_vs_best_dspy_evaluate"]
    report.target("evaluate_vs_best_dspy_evaluate", ">= 1.0", ratio, ratio >= 1.0)
    # the same LM path as the peer (dspy.LM): what dspex itself adds to a DSPy user's evaluation
    ratio = report.ratios["dspy_vs_best_dspy_evaluate"]
    report.target("evaluate_dspy_lm_vs_best_dspy_evaluate", ">= 1.0", ratio, ratio >= 1.0)
    report.target("same_score_everywhere", "== 1 distinct", len(scores), len(scores) == 1)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

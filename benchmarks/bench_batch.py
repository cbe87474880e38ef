"""Batch throughput: dspex ``run_batch`` against ``dspy.Parallel`` and ``Predict.acall``.

Measured in one run:

1. 10,000 items on the ``mock`` backend with 20 ms latency, concurrency 256, every execution
   recorded in SQLite: wall time against the ideal ``N / concurrency × latency``.
2. 2,000 items through the ``dspy`` backend whose LM sleeps 20 ms (DSPy formats and parses on
   both sides), every execution recorded; peers recording nothing: ``dspy.Parallel`` at its best
   thread count (16/32/64) and ``Predict.acall`` under ``asyncio.Semaphore(256)``; dspex in one
   process and with ``workers=2``. Items/s and CPU seconds per item for all, each contender in
   a fresh interpreter (``workers=2``: the parent's CPU only; its worker server is started
   before the clock, as the peers import DSPy before theirs).
3. 100,000 JSONL items through ``dspex batch`` (a subprocess) with zero latency: peak RSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Report, finish, parse_args

QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_lm() -> Any:
    """A DSPy LM whose engine sleeps 20 ms and answers in the ChatAdapter format."""
    return SleepLM()


try:
    import dspy
    from dspy.utils.dummies import DummyLM

    class SleepLM(DummyLM):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__({"question": {"answer": "Paris"}})

        def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
            time.sleep(0.02)
            return super().forward(prompt=prompt, messages=messages, **kwargs)

        async def aforward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
            await asyncio.sleep(0.02)
            return DummyLM.forward(self, prompt=prompt, messages=messages, **kwargs)

except ImportError:  # pragma: no cover
    raise


async def _dspex(db: Path, backend: Any, n: int, concurrency: int, workers: int) -> dict[str, Any]:
    import dspex
    from dspex.config import Settings
    from dspex.store import open_store

    store = open_store(f"sqlite:///{db}")
    async with dspex.Runtime(Settings(), store, backends={"default": backend}) as rt:
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        if workers > 1:
            # steady state, as for the peers whose imports happen before their clocks start:
            # the worker processes' server has imported dspex and DSPy
            await rt.start_workers()
        items = [{"question": f"question {i}?"} for i in range(n)]
        cpu0, t0 = _cpu(), time.perf_counter()
        result = await rt.run_batch("qa", items, max_concurrency=concurrency, workers=workers)
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
    assert result.stats.completed == n, result.stats
    return {"wall_s": wall, "items_per_s": n / wall, "cpu_s_per_item": cpu / n}


def _parallel(n: int, threads: int) -> dict[str, Any]:
    predict = dspy.Predict("question -> answer")
    examples = [(predict, {"question": f"question {i}?"}) for i in range(n)]
    with dspy.context(lm=make_lm()):
        cpu0, t0 = _cpu(), time.perf_counter()
        out = dspy.Parallel(num_threads=threads, disable_progress_bar=True).forward(examples)
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
    assert sum(1 for o in out if o is not None) == n
    return {"wall_s": wall, "items_per_s": n / wall, "cpu_s_per_item": cpu / n}


async def _acall(n: int) -> dict[str, Any]:
    predict = dspy.Predict("question -> answer")
    gate = asyncio.Semaphore(256)

    async def one(i: int) -> Any:
        async with gate:
            return await predict.acall(question=f"question {i}?")

    with dspy.context(lm=make_lm()):
        cpu0, t0 = _cpu(), time.perf_counter()
        out = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
    assert len(out) == n
    return {"wall_s": wall, "items_per_s": n / wall, "cpu_s_per_item": cpu / n}


def _cli_rss(n: int, tmp: Path) -> dict[str, Any]:
    import yaml

    (tmp / "qa.yaml").write_text(yaml.safe_dump(QA))
    with (tmp / "in.jsonl").open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"question": f"question {i}?"}) + "\n")
    dspex_bin = str(Path(sys.executable).parent / "dspex")
    env = {**os.environ, "DSPEX_CONFIG": ""}
    subprocess.run(
        [dspex_bin, "program", "register", "qa.yaml", "--init"],
        cwd=tmp,
        check=True,
        capture_output=True,
        env=env,
    )
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(
        [
            dspex_bin,
            "batch",
            "qa",
            "in.jsonl",
            "--out",
            "out.jsonl",
            "--concurrency",
            "256",
            "--json",
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr or proc.stdout)
    data = json.loads(proc.stdout)
    return {
        "wall_s": wall,
        "items_per_s": n / wall,
        "peak_rss_mb": max(peak, before) / 1024,
        "completed": data["stats"]["completed"],
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median items/s (its other figures with it), and every run's items/s."""
    ordered = sorted(runs, key=lambda r: r["items_per_s"])
    return {**ordered[len(ordered) // 2], "all_items_per_s": [r["items_per_s"] for r in runs]}


def _case(case: str, n: int, tmp: Path) -> dict[str, Any]:
    """Run one DSPy contender in a fresh interpreter (``BENCH_BATCH_CASE``) and read its line.

    CPU is what that interpreter and the children it reaped used; worker processes forked by
    the forkserver are not its children, so for ``dspex:2`` it is the parent's CPU only.
    """
    env = {**os.environ, "BENCH_BATCH_CASE": case, "BENCH_BATCH_N": str(n), "BENCH_TMP": str(tmp)}
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _run_case(case: str) -> dict[str, Any]:
    from dspex.backends.dspy_backend import DspyBackend

    n = int(os.environ["BENCH_BATCH_N"])
    kind, _, arg = case.partition(":")
    if kind == "parallel":
        return _parallel(n, int(arg))
    if kind == "acall":
        return asyncio.run(_acall(n))
    db = Path(os.environ["BENCH_TMP"]) / f"dspex-{arg}.db"
    return asyncio.run(_dspex(db, DspyBackend(lm=make_lm()), n, 256, int(arg)))


def main() -> int:
    case = os.environ.get("BENCH_BATCH_CASE")
    if case:
        print(json.dumps(_run_case(case)))
        return 0
    args = parse_args(__doc__ or "")
    from dspex.backends.mock import MockBackend

    n1 = 2_000 if args.quick else 10_000
    n2 = 500 if args.quick else 2_000
    n3 = 10_000 if args.quick else 100_000
    report = Report("bench_batch")
    with tempfile.TemporaryDirectory() as raw:
        tmp = Path(raw)
        # 1. mock 20 ms, concurrency 256, recorded in SQLite
        one = asyncio.run(_dspex(tmp / "a.db", MockBackend(latency_ms=20), n1, 256, 1))
        ideal = n1 / 256 * 0.020
        report.metrics["mock_sqlite"] = {**one, "ideal_s": ideal, "items": n1}
        report.row(
            f"mock 20ms x{n1} @256, SQLite",
            f"{one['wall_s']:.2f} s",
            f"ideal {ideal:.2f} s, {one['items_per_s']:.0f} items/s",
        )
        report.target(
            "mock_wall_vs_ideal", "<= 1.3", one["wall_s"] / ideal, one["wall_s"] / ideal <= 1.3
        )
        # 2. the DSPy path, against the peers: each contender in a fresh interpreter, so none
        # inherits another's heap, threads or warmed caches (run in one process, whoever ran
        # later was measured on a heap grown by thousands of earlier calls); the contenders
        # take turns over several rounds and each keeps its median, so a slow moment of a
        # shared machine does not decide a ratio
        rounds = 1 if args.quick else 3
        cases = {f"dspy.Parallel({t})": f"parallel:{t}" for t in (16, 32, 64)}
        cases["Predict.acall @256"] = "acall"
        cases["dspex (1 process)"] = "dspex:1"
        cases["dspex (workers=2)"] = "dspex:2"
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
        for _ in range(rounds):
            for name, case in cases.items():
                runs[name].append(_case(case, n2, tmp))
        measured = {name: _median(found) for name, found in runs.items()}
        ours1 = measured.pop("dspex (1 process)")
        ours2 = measured.pop("dspex (workers=2)")
        peers = measured
        best_name = max(peers, key=lambda k: peers[k]["items_per_s"])
        best = peers[best_name]["items_per_s"]
        report.peer = {**peers, "best": best_name, "rounds": rounds}
        report.metrics["dspy_one_process"] = ours1
        report.metrics["dspy_two_workers"] = ours2
        for name, m in {**peers, "dspex (1 process)": ours1, "dspex (workers=2)": ours2}.items():
            report.row(
                f"dspy LM 20ms x{n2}: {name}",
                f"{m['items_per_s']:.0f} items/s",
                f"{m['cpu_s_per_item'] * 1000:.2f} ms CPU/item (median of {rounds})",
            )
        report.ratios["one_process_vs_best_peer"] = ours1["items_per_s"] / best
        report.ratios["two_workers_vs_best_peer"] = ours2["items_per_s"] / best
        report.target(
            "one_process_vs_best_peer",
            ">= 0.9",
            report.ratios["one_process_vs_best_peer"],
            report.ratios["one_process_vs_best_peer"] >= 0.9,
        )
        report.target(
            "two_workers_vs_best_peer",
            ">= 1.6",
            report.ratios["two_workers_vs_best_peer"],
            report.ratios["two_workers_vs_best_peer"] >= 1.6,
        )
        # 3. a large JSONL through the CLI
        cli_dir = tmp / "cli"
        cli_dir.mkdir()
        three = _cli_rss(n3, cli_dir)
        report.metrics["cli_jsonl"] = {**three, "items": n3}
        report.row(
            f"dspex batch x{n3} JSONL",
            f"{three['peak_rss_mb']:.0f} MB peak RSS",
            f"{three['items_per_s']:.0f} items/s",
        )
        report.target(
            "cli_peak_rss_mb", "<= 300", three["peak_rss_mb"], three["peak_rss_mb"] <= 300
        )
        report.metrics["bench_process_peak_rss_mb"] = _rss_mb()
        report.row("this process peak RSS", f"{_rss_mb():.0f} MB")
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

"""Batches on Ray: dspex's Ray actors against ``--workers 2`` and against Ray Data by hand.

Measured in one run, on one loopback OpenAI-compatible server (``_loopback_responder.py``, its
own process, answering in DSPy's ChatAdapter format after 20 ms) and the same items:

1. Ray's start-up: ``ray.init`` of a local Ray (two CPUs, bound to 127.0.0.1, no dashboard).
2. dspex with ``workers=2`` (two local worker processes) and dspex on Ray with two actors
   (``cluster="ray"``, ``ray_actors=2``), both over the ``openai`` backend, concurrency 32, every
   execution recorded in one SQLite file (a one-node Ray may use SQLite): items/s, and the
   overhead per item of Ray against worker processes: each contender's wall time for the items
   less its wall time for a one-item batch (what every batch pays once: Ray's actors build their
   runtime, the worker processes fork), the difference divided by the items. The fixed cost of
   a batch on Ray (actor start-up) is reported on its own.
3. A second batch on the same runtime: one runtime runs two one-item batches on Ray in a row;
   the first pays the actors' start-up (their runtimes built, the program prepared), the
   second runs on the actors the first left (kept for the runtime's life) and should cost
   about what a one-item batch in one process costs.
4. The peer a Ray user writes by hand: Ray Data ``map_batches`` over the same items with two
   actors, each calling plain DSPy (``dspy.Predict.acall`` on ``dspy.LM``, response cache off)
   under ``asyncio.Semaphore(16)``; nothing recorded. dspex on Ray should match it (≥ 1.0×)
   while recording every item.

The contenders take turns over the rounds and keep their medians. Everything runs on this
machine's cores, the server included: compare the ratios, not the absolute numbers.
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

from _common import Report, finish, parse_args

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # this machine is 127.0.0.1
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token written under the home directory
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

QA = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}
LATENCY = 0.02
CONCURRENCY = 32
MODEL = "bench-model"
KEY_ENV = "BENCH_RAY_KEY"


def _settings(base_url: str, database: Path) -> Any:
    from dspex.config import BackendConfig, Settings

    return Settings(
        database_url=f"sqlite:///{database}",
        backends={
            "default": BackendConfig(
                kind="openai", model=MODEL, api_base=base_url, api_key_env=KEY_ENV
            )
        },
    )


async def _dspex(base_url: str, database: Path, items: list[dict[str, str]], **how: Any) -> float:
    """One recorded batch; its wall seconds."""
    import dspex

    async with dspex.Runtime.open(settings=_settings(base_url, database)) as rt:
        if not [p for p in await rt.list_programs() if p.name == "qa"]:
            await rt.register(QA)
            await rt.initialize("qa")
        if how.get("workers", 1) > 1:
            await rt.start_workers()  # the worker server imports before the clock, as Ray's do
        started = time.perf_counter()
        result = await rt.run_batch("qa", items, max_concurrency=CONCURRENCY, **how)
        wall = time.perf_counter() - started
    assert result.stats.completed == len(items), result.stats
    return wall


async def _dspex_twice(base_url: str, database: Path, item: dict[str, str]) -> tuple[float, float]:
    """Two one-item batches on Ray in a row on one runtime; the wall seconds of each."""
    import dspex

    walls: list[float] = []
    async with dspex.Runtime.open(settings=_settings(base_url, database)) as rt:
        if not [p for p in await rt.list_programs() if p.name == "qa"]:
            await rt.register(QA)
            await rt.initialize("qa")
        for _ in range(2):
            started = time.perf_counter()
            result = await rt.run_batch("qa", [item], cluster="ray", ray_actors=2)
            walls.append(time.perf_counter() - started)
            assert result.stats.completed == 1, result.stats
    return walls[0], walls[1]


class _PredictBatch:
    """What a Ray Data user writes: plain DSPy over each batch, ``acall`` under a semaphore."""

    def __init__(self, base_url: str) -> None:
        import dspy

        self.lm = dspy.LM(f"openai/{MODEL}", api_base=base_url, api_key="bench", cache=False)
        self.predict = dspy.Predict("question -> answer")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import dspy

        async def run() -> list[str]:
            gate = asyncio.Semaphore(CONCURRENCY // 2)

            async def one(question: str) -> str:
                async with gate:
                    with dspy.context(lm=self.lm):
                        out = await self.predict.acall(question=question)
                return str(out.answer)

            return await asyncio.gather(*(one(str(q)) for q in batch["question"]))

        return {"answer": asyncio.run(run())}


def _ray_data(base_url: str, items: list[dict[str, str]]) -> float:
    import ray

    started = time.perf_counter()
    dataset = ray.data.from_items(items).map_batches(
        _PredictBatch,
        fn_constructor_args=(base_url,),
        batch_size=64,
        concurrency=2,
        num_cpus=1,
    )
    answers = dataset.take_all()
    wall = time.perf_counter() - started
    assert len(answers) == len(items)
    return wall


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 600 if args.quick else 3000
    rounds = 1 if args.quick else 3
    sys.path.insert(0, str(Path(__file__).parent))
    import _loopback_responder as responder

    import ray

    report = Report("bench_ray")
    os.environ[KEY_ENV] = "bench"
    items = [{"question": f"What is the capital of France? ({i})"} for i in range(n)]
    proc, base_url = responder.start(LATENCY)
    walls: dict[str, list[float]] = {
        "workers": [],
        "ray": [],
        "ray_data": [],
        "workers_1": [],
        "ray_1": [],
        "ray_first": [],
        "ray_second": [],
        "here_1": [],
    }
    try:
        started = time.perf_counter()
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=80 * 1024 * 1024,
            _node_ip_address="127.0.0.1",
            logging_level="warning",
            log_to_driver=False,
        )
        startup = time.perf_counter() - started
        ray.data.DataContext.get_current().enable_progress_bars = False
        with tempfile.TemporaryDirectory(prefix="dspex-bench-ray-") as tmp:
            for round_ in range(rounds):
                database = Path(tmp) / f"round{round_}.db"
                for size, suffix in ((1, "_1"), (n, "")):
                    walls["workers" + suffix].append(
                        asyncio.run(_dspex(base_url, database, items[:size], workers=2))
                    )
                    walls["ray" + suffix].append(
                        asyncio.run(
                            _dspex(base_url, database, items[:size], cluster="ray", ray_actors=2)
                        )
                    )
                first, second = asyncio.run(_dspex_twice(base_url, database, items[0]))
                walls["ray_first"].append(first)
                walls["ray_second"].append(second)
                walls["here_1"].append(asyncio.run(_dspex(base_url, database, items[:1])))
                walls["ray_data"].append(_ray_data(base_url, items))

    finally:
        ray.shutdown()
        responder.stop(proc)

    wall = {name: statistics.median(values) for name, values in walls.items()}
    rate = {name: n / wall[name] for name in ("workers", "ray", "ray_data")}
    per_item = {
        name: (wall[name] - wall[name + "_1"]) / max(n - 1, 1) for name in ("ray", "workers")
    }
    overhead_ms = (per_item["ray"] - per_item["workers"]) * 1000.0
    overall_ms = (wall["ray"] - wall["workers"]) / n * 1000.0
    vs_data = rate["ray"] / rate["ray_data"]
    report.metrics = {
        "items": n,
        "rounds": rounds,
        "ray_startup_s": round(startup, 3),
        "dspex_ray_items_per_s": round(rate["ray"], 1),
        "dspex_workers_items_per_s": round(rate["workers"], 1),
        "ray_overhead_ms_per_item": round(overhead_ms, 3),
        "ray_overhead_ms_per_item_with_startup": round(overall_ms, 3),
        "ray_batch_fixed_s": round(wall["ray_1"], 3),
        "workers_batch_fixed_s": round(wall["workers_1"], 3),
        "ray_first_batch_on_runtime_s": round(wall["ray_first"], 3),
        "ray_second_batch_on_runtime_s": round(wall["ray_second"], 3),
        "in_process_batch_fixed_s": round(wall["here_1"], 3),
    }
    report.peer = {
        "ray_data_dspy_items_per_s": round(rate["ray_data"], 1),
        "dspex_workers_items_per_s": round(rate["workers"], 1),
    }
    report.ratios = {
        "dspex_ray_vs_ray_data": round(vs_data, 3),
        "dspex_ray_vs_workers": round(rate["ray"] / rate["workers"], 3),
    }
    report.row("items, rounds (medians)", f"{n}, {rounds}")
    report.row("Ray start-up (ray.init, local)", f"{startup:.2f} s")
    report.row("dspex workers=2 (recorded)", f"{rate['workers']:.0f} items/s")
    report.row("dspex Ray, 2 actors (recorded)", f"{rate['ray']:.0f} items/s")
    report.row(
        "Ray Data + Predict.acall (peer)", f"{rate['ray_data']:.0f} items/s", "nothing recorded"
    )
    report.row(
        "a one-item batch: Ray / workers", f"{wall['ray_1']:.2f} / {wall['workers_1']:.2f} s"
    )
    report.row(
        "one runtime, two 1-item batches on Ray",
        f"{wall['ray_first']:.2f} then {wall['ray_second']:.3f} s",
        "the second on the actors the first left",
    )
    report.row("a one-item batch in one process", f"{wall['here_1']:.3f} s", "for comparison")
    report.row("Ray overhead vs workers", f"{overhead_ms:.3f} ms/item", "beyond the fixed cost")
    report.row("  with the fixed cost spread", f"{overall_ms:.3f} ms/item", f"over {n} items")
    report.row("dspex Ray / Ray Data", f"{vs_data:.2f}x")
    report.target("ray_overhead_ms_per_item", "<= 1.0", overhead_ms, overhead_ms <= 1.0)
    report.target("dspex_ray_vs_ray_data", ">= 1.0", vs_data, vs_data >= 1.0)
    second = wall["ray_second"]
    report.target("ray_second_batch_on_runtime_s", "<= 0.5", second, second <= 0.5)
    return finish(report, args)


if __name__ == "__main__":
    raise SystemExit(main())

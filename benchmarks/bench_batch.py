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
4. The main DSPy comparison, on DSPy's real path: 5,000 items against a loopback
   OpenAI-compatible server (``_loopback_responder.py``: its own process, a minimal asyncio
   HTTP/1.1 responder answering in the ChatAdapter format after 20 ms), concurrency 64. dspex
   records every execution in SQLite, over the ``openai`` backend and over the ``dspy`` backend
   (``dspy.LM``); the peers record nothing: ``Predict.acall`` under ``asyncio.Semaphore(64)`` and
   ``dspy.Parallel(64)``, both on ``dspy.LM`` with its response cache off; a raw aiohttp POST of
   the same request is the floor; the ``openai`` case also with ``workers=2`` (the batch's
   concurrency split between two worker processes; CPU of all of dspex's processes, and how
   busy the two cores were). Each contender runs in a fresh interpreter after 64 warm-up
   calls, the contenders take turns over three rounds and keep their medians; client CPU per
   item for each, and the server's CPU per request (it runs on the same cores). Section 2
   (DummyLM, no HTTP) stays as the second view.

In 1 and 2 the process running dspex is tuned as the ``dspex`` command tunes its own
(:func:`dspex.tune_process`: the library by itself leaves its host's interpreter alone); the
peers run as DSPy ships.
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
from typing import Any, NamedTuple

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
        # A process that runs dspex alone, as `dspex batch` is: it tunes its interpreter as the
        # command does (the library never does it by itself); the peers run as DSPy ships.
        dspex.tune_process()
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


# --- 4. the loopback HTTP server: DSPy's real path ----------------------------------------------

HTTP_CONCURRENCY = 64
HTTP_LATENCY = 0.02
HTTP_WARMUP = 64
HTTP_MODEL = "bench-model"
HTTP_KEY_ENV = "BENCH_BATCH_KEY"


def _http_lm(base_url: str) -> Any:
    """What a DSPy user builds for an OpenAI-compatible endpoint (response cache off)."""
    return dspy.LM(f"openai/{HTTP_MODEL}", api_base=base_url, api_key="bench", cache=False)


def _machine_busy() -> tuple[int, int]:
    """Clock ticks every CPU of the machine spent busy, and all its ticks (Linux; else 0s)."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):  # not Linux
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class _Clock(NamedTuple):
    cpu: float
    t: float
    machine: tuple[int, int]


def _clock() -> _Clock:
    """Start measuring: this process's CPU, the wall clock and the machine's busy ticks."""
    return _Clock(_cpu(), time.perf_counter(), _machine_busy())


def _measured(n: int, clock: _Clock) -> dict[str, Any]:
    """Items/s and CPU per item since ``clock``, and how many of the machine's cores were busy
    meanwhile (every process on it: the contender, the LM server and anything else running)."""
    wall = time.perf_counter() - clock.t
    busy, total = _machine_busy()
    ticks = total - clock.machine[1]
    cores = (busy - clock.machine[0]) / ticks * (os.cpu_count() or 1) if ticks > 0 else 0.0
    return {
        "wall_s": wall,
        "items_per_s": n / wall,
        "cpu_s_per_item": (_cpu() - clock.cpu) / n,
        "machine_busy_cores": cores,
    }


def _tree_cpu() -> float:
    """CPU seconds of this process and every process below it, living or reaped (Linux
    ``/proc``; elsewhere this process and its reaped children): a batch's worker processes are
    the children of dspex's worker server, not of this process."""
    own = _cpu()
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    text = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                fields = text.rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    except OSError:  # pragma: no cover - not Linux
        return own
    below, frontier = 0, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, ticks) in stats.items():
            if ppid == parent:
                below += ticks
                frontier.append(pid)
    return own + below / os.sysconf("SC_CLK_TCK")


async def _http_acall(n: int, base_url: str) -> dict[str, Any]:
    predict = dspy.Predict("question -> answer")
    gate = asyncio.Semaphore(HTTP_CONCURRENCY)

    async def one(i: int) -> Any:
        async with gate:
            return await predict.acall(question=f"question {i}?")

    with dspy.context(lm=_http_lm(base_url)):
        await asyncio.gather(*(one(-i - 1) for i in range(HTTP_WARMUP)))
        clock = _clock()
        out = await asyncio.gather(*(one(i) for i in range(n)))
        measured = _measured(n, clock)
    assert all(o.answer == "Paris" for o in out)
    return measured


def _http_parallel(n: int, threads: int, base_url: str) -> dict[str, Any]:
    predict = dspy.Predict("question -> answer")
    parallel = dspy.Parallel(num_threads=threads, disable_progress_bar=True)
    with dspy.context(lm=_http_lm(base_url)):
        parallel.forward([(predict, {"question": f"warm {i}?"}) for i in range(HTTP_WARMUP)])
        examples = [(predict, {"question": f"question {i}?"}) for i in range(n)]
        clock = _clock()
        out = parallel.forward(examples)
        measured = _measured(n, clock)
    assert sum(1 for o in out if o is not None and o.answer == "Paris") == n
    return measured


async def _http_dspex(db: Path, backend: Any, n: int, workers: int = 1) -> dict[str, Any]:
    """``run_batch`` as ``dspex batch`` runs it: recorded in SQLite, the process tuned as the
    command tunes its own. With ``workers`` > 1 the batch's concurrency is split between the
    worker processes (the worker server started and warmed up before the clock); CPU is then
    the whole process tree's, and this process's own is reported apart."""
    import dspex
    from dspex.config import Settings
    from dspex.store import open_store

    store = open_store(f"sqlite:///{db}")
    async with dspex.Runtime(Settings(), store, backends={"default": backend}) as rt:
        info = await rt.register(QA)
        await rt.initialize(info.name, info.version)
        if workers > 1:
            await rt.start_workers()
        warm = [{"question": f"warm {i}?"} for i in range(HTTP_WARMUP * workers)]
        await rt.run_batch("qa", warm, max_concurrency=HTTP_CONCURRENCY, workers=workers)
        items = [{"question": f"question {i}?"} for i in range(n)]
        # as `dspex batch` tunes its process: for dspy.LM's worker threads when the program
        # calls a dspy.LM (the dspy backend), else the 1 ms switch interval for the SQLite writer
        dspex.tune_process(dspy_lm=await rt.calls_dspy_lm("qa"))
        tree0, clock = _tree_cpu(), _clock()
        result = await rt.run_batch("qa", items, max_concurrency=HTTP_CONCURRENCY, workers=workers)
        measured = _measured(n, clock)
        if workers > 1:
            await asyncio.sleep(0.5)  # the worker server reaps the workers that just ended
            measured["parent_cpu_s_per_item"] = measured["cpu_s_per_item"]
            measured["cpu_s_per_item"] = (_tree_cpu() - tree0) / n
    await backend.aclose()
    assert result.stats.completed == n, result.stats
    return measured


async def _http_raw(n: int, base_url: str) -> dict[str, Any]:
    """The floor: an aiohttp POST of the same request, its JSON read, nothing else."""
    import aiohttp
    import orjson

    from dspex.backends._dspy_adapter import FastChatAdapter

    signature = dspy.Signature("question -> answer")
    messages = FastChatAdapter().format(signature, [], {"question": "question 0?"})
    body = orjson.dumps({"model": HTTP_MODEL, "messages": messages})
    url = f"{base_url}/chat/completions"
    gate = asyncio.Semaphore(HTTP_CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=HTTP_CONCURRENCY)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> Any:
            async with gate, session.post(url, data=body) as response:
                return orjson.loads(await response.read())

        await asyncio.gather(*(one() for _ in range(HTTP_WARMUP)))
        clock = _clock()
        out = await asyncio.gather(*(one() for _ in range(n)))
        measured = _measured(n, clock)
    assert len(out) == n
    return measured


def _run_http_case(kind: str, arg: str, n: int) -> dict[str, Any]:
    base_url = os.environ["BENCH_BASE_URL"]
    if kind == "http-acall":
        return asyncio.run(_http_acall(n, base_url))
    if kind == "http-parallel":
        return _http_parallel(n, int(arg), base_url)
    if kind == "http-raw":
        return asyncio.run(_http_raw(n, base_url))
    db = Path(os.environ["BENCH_TMP"]) / f"{kind}-{arg or 1}.db"
    if kind == "http-openai":
        from dspex.backends.openai_backend import OpenAIBackend

        backend: Any = OpenAIBackend(
            "default", base_url=base_url, model=HTTP_MODEL, max_connections=HTTP_CONCURRENCY
        )
        return asyncio.run(_http_dspex(db, backend, n, int(arg or 1)))
    from dspex.backends.dspy_backend import DspyBackend

    os.environ[HTTP_KEY_ENV] = "bench"
    backend = DspyBackend(
        "default", model=f"openai/{HTTP_MODEL}", api_base=base_url, api_key_env=HTTP_KEY_ENV
    )
    return asyncio.run(_http_dspex(db, backend, n))


def _http_section(report: Report, n: int, rounds: int, tmp: Path) -> None:
    """Section 4: every contender against one loopback server, in turns; medians compared."""
    import _loopback_responder as responder

    cases = {
        "dspex openai (recorded)": "http-openai",
        "dspex openai workers=2 (recorded)": "http-openai:2",
        "dspex dspy.LM (recorded)": "http-dspy",
        "Predict.acall @64": "http-acall",
        "dspy.Parallel(64)": "http-parallel:64",
        "raw aiohttp POST": "http-raw",
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in cases}
    proc, base_url = responder.start(HTTP_LATENCY)
    try:
        for _ in range(rounds):
            for name, case in cases.items():
                before = responder.stats(base_url)
                found = _case(case, n, tmp, BENCH_BASE_URL=base_url)
                after = responder.stats(base_url)
                requests = max(1, after["requests"] - before["requests"])
                found["server_cpu_ms_per_request"] = (after["cpu"] - before["cpu"]) / requests * 1e3
                runs[name].append(found)
    finally:
        responder.stop(proc)
    measured = {name: _median(found) for name, found in runs.items()}
    openai, dspy_kind = measured["dspex openai (recorded)"], measured["dspex dspy.LM (recorded)"]
    acall, parallel = measured["Predict.acall @64"], measured["dspy.Parallel(64)"]
    peers = {"Predict.acall @64": acall, "dspy.Parallel(64)": parallel}
    best_name = max(peers, key=lambda k: peers[k]["items_per_s"])
    best = peers[best_name]["items_per_s"]
    report.peer["http"] = {
        **peers,
        "raw aiohttp POST": measured["raw aiohttp POST"],
        "best": best_name,
        "rounds": rounds,
        "items": n,
        "concurrency": HTTP_CONCURRENCY,
        "server_latency_s": HTTP_LATENCY,
    }
    two = measured["dspex openai workers=2 (recorded)"]
    report.metrics["http_openai"] = openai
    report.metrics["http_openai_two_workers"] = two
    report.metrics["http_dspy_kind"] = dspy_kind
    for name, m in measured.items():
        report.row(
            f"HTTP 20ms x{n} @{HTTP_CONCURRENCY}: {name}",
            f"{m['items_per_s']:.0f} items/s",
            f"{m['cpu_s_per_item'] * 1000:.2f} ms CPU/item, server "
            f"{m['server_cpu_ms_per_request']:.3f} ms/request (median of {rounds})",
        )
    # where the two cores go: client processes, the LM server, and the ceiling the batch's
    # concurrency sets (its limit is split between the workers, never multiplied)
    ceiling = HTTP_CONCURRENCY / HTTP_LATENCY
    cpus = os.cpu_count() or 1
    for name, m in (("1 process", openai), ("workers=2", two)):
        client = m["items_per_s"] * m["cpu_s_per_item"]
        server = m["items_per_s"] * m["server_cpu_ms_per_request"] / 1000
        others = max(0.0, m["machine_busy_cores"] - client - server)
        m["cores"] = {"client": client, "lm_server": server, "others": others}
        report.row(
            f"HTTP openai {name}: where the {cpus} cores went",
            f"{m['machine_busy_cores']:.2f} busy",
            f"client {client:.2f} (all its processes), LM server {server:.2f}, other "
            f"processes {others:.2f}; {m['items_per_s'] / ceiling:.0%} of the "
            f"{ceiling:.0f}/s that {HTTP_CONCURRENCY} in flight x {HTTP_LATENCY * 1000:.0f} ms "
            "allow",
        )
    two_ratio = two["items_per_s"] / openai["items_per_s"]
    report.ratios["http_openai_two_workers_vs_one"] = two_ratio
    report.target("http_openai_two_workers_vs_one", ">= 1.5", two_ratio, two_ratio >= 1.5)
    ratio = openai["items_per_s"] / best
    report.ratios["http_openai_vs_best_dspy_peer"] = ratio
    report.target("http_openai_vs_best_dspy_peer", ">= 3.0", ratio, ratio >= 3.0)
    cpu_ms = openai["cpu_s_per_item"] * 1000
    report.target("http_openai_cpu_ms_per_item", "<= 0.6", cpu_ms, cpu_ms <= 0.6)
    kind_ratio = dspy_kind["items_per_s"] / acall["items_per_s"]
    report.ratios["http_dspy_kind_vs_acall"] = kind_ratio
    report.target("http_dspy_kind_vs_acall", ">= 1.0", kind_ratio, kind_ratio >= 1.0)


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


def _case(case: str, n: int, tmp: Path, **env: str) -> dict[str, Any]:
    """Run one DSPy contender in a fresh interpreter (``BENCH_BATCH_CASE``) and read its line.

    CPU is what that interpreter and the children it reaped used; worker processes forked by
    dspex's worker server are not its children, so for ``dspex:2`` it is the parent's CPU only.
    """
    env = {
        **os.environ,
        "BENCH_BATCH_CASE": case,
        "BENCH_BATCH_N": str(n),
        "BENCH_TMP": str(tmp),
        **env,
    }
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
    if kind.startswith("http-"):
        return _run_http_case(kind, arg, n)
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
        # 4. the loopback HTTP server: the main DSPy comparison
        _http_section(report, 600 if args.quick else 5_000, 1 if args.quick else 3, tmp)
        report.metrics["bench_process_peak_rss_mb"] = _rss_mb()
        report.row("this process peak RSS", f"{_rss_mb():.0f} MB")
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

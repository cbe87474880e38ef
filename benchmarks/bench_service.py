"""Throughput and latency of ``POST /programs/{name}/executions`` over HTTP.

The service: ``dspex.service.create_app`` with the ``mock`` backend (zero latency), every
execution recorded in a fresh SQLite database, one uvicorn worker (uvloop + httptools when
installed) on 127.0.0.1. Peer, measured in the same run under the same load: what teams write
today — a minimal FastAPI endpoint that calls the same one-predictor DSPy program through
``dspy.asyncify`` with ``dspy.utils.DummyLM`` (nothing recorded).

Load: a separate process on loopback, closed loop (each connection sends its next request when
the previous answer arrives), for a bounded time, each request with a distinct question (so the
DummyLM cache never answers); one warm-up per server first. The generator is ``wrk`` (C, one
thread, ``--latency``) when it is on ``PATH`` — it costs little CPU, which matters on a small
machine where it shares the cores with the server; otherwise an asyncio httpx generator (a
Python process that takes a good share of a core itself, so its numbers are pessimistic). The
output and JSON say which was used. Install wrk on Debian/Ubuntu with ``apt-get install wrk``.

Concurrency: the targets are judged at ``CONCURRENCY`` (16) connections in flight — a
reverse proxy's or a client pool's usual keep-alive pool towards one worker; the sweep
``SWEEP`` (4, 8, 16, 32) is reported for both servers so the throughput/latency curve is seen.
Latency under a closed loop grows with the connections once the worker is saturated
(Little's law: p50 ≈ connections / throughput).

Targets (at ``CONCURRENCY``): ≥ 500 req/s, p99 ≤ 50 ms, zero errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

SIGNATURE = "question: str -> answer: str"
SPEC: dict[str, Any] = {
    "name": "qa",
    "signature": SIGNATURE,
    "modules": {"answer": {"kind": "predict", "signature": SIGNATURE}},
}
CONCURRENCY = 16
SWEEP: tuple[int, ...] = (4, 8, 16, 32)
PATH = "/programs/qa/executions"


# -- the servers (run in their own process) ---------------------------------------------------


class PeerBody(BaseModel):
    """The peer endpoint's request body (the same JSON the service takes)."""

    inputs: dict[str, str]


def _uvicorn_options() -> dict[str, Any]:
    options: dict[str, Any] = {"workers": 1, "log_level": "warning", "access_log": False}
    try:
        import uvloop  # noqa: F401

        options["loop"] = "uvloop"
    except ImportError:
        options["loop"] = "asyncio"
    try:
        import httptools  # noqa: F401

        options["http"] = "httptools"
    except ImportError:
        options["http"] = "h11"
    return options


def serve_dspex(port: int, workdir: str) -> None:
    import uvicorn

    import dspex
    from dspex.service import create_app

    url = f"sqlite:///{Path(workdir) / 'dspex.db'}"

    async def prepare() -> None:
        async with dspex.Runtime.open(url, cwd=Path(workdir)) as runtime:
            info = await runtime.register(SPEC)
            await runtime.initialize(info.name, info.version)

    asyncio.run(prepare())
    app = create_app(url, cwd=Path(workdir), api_keys=[])
    uvicorn.run(app, host="127.0.0.1", port=port, **_uvicorn_options())


def serve_peer(port: int) -> None:
    import dspy
    import uvicorn
    from dspy.utils import DummyLM
    from fastapi import FastAPI

    dspy.configure(lm=DummyLM({"question": {"answer": "42"}}))
    program = dspy.asyncify(dspy.Predict("question -> answer"))
    app = FastAPI()

    @app.post(PATH)
    async def run(body: PeerBody) -> dict[str, Any]:
        prediction = await program(question=body.inputs["question"])
        return {"status": "completed", "outputs": {"answer": prediction.answer}}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, **_uvicorn_options())


# -- the load generators (their own process) --------------------------------------------------

# wrk (one thread): a distinct question per request (``prefix`` keeps them distinct across runs
# against the same server); an answer is an error unless it is 200 with ``status: completed``.
WRK_SCRIPT = r"""
local threads = {}
local counter, prefix = 0, "w"
bad = 0  -- a global: done() reads it from each thread with thread:get("bad")
function setup(thread) table.insert(threads, thread) end
function init(args) prefix = args[1] or "w" end
function request()
  counter = counter + 1
  local body = '{"inputs":{"question":"what is item ' .. prefix .. '-' .. counter .. '?"}}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"status"%s*:%s*"completed"') then bad = bad + 1 end
end
function done(summary, latency, requests)
  local b = 0
  for _, t in ipairs(threads) do b = b + t:get("bad") end
  local e = summary.errors
  io.write(string.format(
    'DSPEX_RESULT {"requests":%d,"duration_us":%d,"bad":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"timeout":%d,"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%f}\n',
    summary.requests, summary.duration, b, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


def _wrk(url: str, seconds: float, concurrency: int, prefix: str, script: Path) -> dict[str, Any]:
    """One bounded wrk run (one thread, ``concurrency`` connections) against ``url``."""
    command = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url + PATH,
        "--",
        prefix,
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("DSPEX_RESULT "))
    raw = json.loads(line.removeprefix("DSPEX_RESULT "))
    wall = raw["duration_us"] / 1e6
    errors = raw["bad"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return {
        "requests": raw["requests"],
        "errors": errors,
        "wall_s": round(wall, 3),
        "rps": round(raw["requests"] / wall, 1) if wall else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p75_ms": round(raw["p75_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
    }


async def _load(
    url: str, seconds: float, max_requests: int, concurrency: int, prefix: str
) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10.0) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                body = {"inputs": {"question": f"what is item {prefix}-{sent}?"}}
                t0 = time.perf_counter()
                try:
                    response = await client.post(PATH, json=body)
                    ok = response.status_code == 200 and response.json()["status"] == "completed"
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1000.0)
                errors += not ok

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        wall = time.perf_counter() - started
    latencies.sort()
    count = len(latencies)

    def pct(q: float) -> float:
        return latencies[max(0, min(count - 1, int(q * count + 0.5) - 1))] if count else 0.0

    return {
        "requests": count,
        "errors": errors,
        "wall_s": round(wall, 3),
        "rps": round(count / wall, 1) if wall else 0.0,
        "p50_ms": round(pct(0.50), 2),
        "p75_ms": round(pct(0.75), 2),
        "p90_ms": round(pct(0.90), 2),
        "p99_ms": round(pct(0.99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else 0.0,
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else 0.0,
    }


# -- the driver --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server on port {port} did not start")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # not Linux
        return "n/a"


def _measure(
    kind: str,
    seconds: float,
    max_requests: int,
    workdir: str,
    generator: str,
    levels: Sequence[int],
) -> dict[int, dict[str, Any]]:
    """Start one server, warm it up, then one bounded run per concurrency level."""
    port = _free_port()
    me = str(Path(__file__).resolve())
    server = subprocess.Popen(
        [sys.executable, me, "_serve", kind, str(port), workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    script = Path(workdir) / "post.lua"
    script.write_text(WRK_SCRIPT)

    def run(concurrency: int, secs: float, prefix: str) -> dict[str, Any]:
        if generator == "wrk":
            return _wrk(url, secs, concurrency, prefix, script)
        load = [sys.executable, me, "_load", url, str(secs), str(max_requests)]
        out = subprocess.run(
            [*load, str(concurrency), prefix], check=True, capture_output=True, text=True
        )
        return dict(json.loads(out.stdout))

    try:
        _wait_up(port)
        run(CONCURRENCY, 2.0, "warm")
        results: dict[int, dict[str, Any]] = {}
        for concurrency in levels:
            before = _loadavg()
            result = run(concurrency, seconds, f"c{concurrency}")
            results[concurrency] = {**result, "loadavg_before": before, "loadavg_after": _loadavg()}
        return results
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        kind, port, workdir = sys.argv[2], int(sys.argv[3]), sys.argv[4]
        if kind == "dspex":
            serve_dspex(port, workdir)
        else:
            serve_peer(port)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        url, seconds, max_requests = sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
        concurrency, prefix = int(sys.argv[5]), sys.argv[6]
        print(json.dumps(asyncio.run(_load(url, seconds, max_requests, concurrency, prefix))))
        return 0

    from _common import Report, finish, parse_args

    args = parse_args(__doc__.splitlines()[0])
    seconds = 4.0 if args.quick else 10.0
    max_requests = 20_000 if args.quick else 100_000
    levels = sorted({*SWEEP, CONCURRENCY})
    generator = "wrk" if shutil.which("wrk") else "httpx"
    if generator != "wrk":
        print(
            "wrk not found: using the Python httpx load generator, which shares the CPU with "
            "the server (install wrk for truer numbers: apt-get install wrk)",
            file=sys.stderr,
        )
    with tempfile.TemporaryDirectory(prefix="dspex-bench-service-") as workdir:
        ours_all = _measure("dspex", seconds, max_requests, workdir, generator, levels)
    with tempfile.TemporaryDirectory(prefix="dspex-bench-peer-") as workdir:
        peer_all = _measure("peer", seconds, max_requests, workdir, generator, levels)
    ours, peer = ours_all[CONCURRENCY], peer_all[CONCURRENCY]
    report = Report("bench_service")
    report.metrics = {
        **ours,
        "concurrency": CONCURRENCY,
        "load_generator": generator,
        "seconds_per_run": seconds,
        "server": _uvicorn_options(),
        "sweep": {str(c): r for c, r in ours_all.items()},
    }
    report.peer = {
        "name": "FastAPI + dspy.asyncify + DummyLM (not recorded)",
        **peer,
        "sweep": {str(c): r for c, r in peer_all.items()},
    }
    report.ratios = {
        "rps_vs_peer": round(ours["rps"] / peer["rps"], 3) if peer["rps"] else 0.0,
        "p99_vs_peer": round(ours["p99_ms"] / peer["p99_ms"], 3) if peer["p99_ms"] else 0.0,
    }
    report.row("load generator", generator, f"{seconds:.0f} s per run, 127.0.0.1, closed loop")
    for label, data in (("dspex serve", ours_all), ("peer", peer_all)):
        for c, r in data.items():
            mark = "  <- targets" if c == CONCURRENCY and label == "dspex serve" else ""
            report.row(
                f"{label} c={c}",
                f"{r['rps']:.0f} req/s",
                f"p50 {r['p50_ms']:.1f} ms  p90 {r['p90_ms']:.1f}  p99 {r['p99_ms']:.1f}  "
                f"max {r['max_ms']:.1f}  errors {r['errors']}  "
                f"load {r['loadavg_before']}{mark}",
            )
    report.target("throughput", ">= 500 req/s", ours["rps"], ours["rps"] >= 500)
    report.target("p99", "<= 50 ms", ours["p99_ms"], ours["p99_ms"] <= 50)
    report.target("errors", "== 0", ours["errors"], ours["errors"] == 0)
    return finish(report, args)


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

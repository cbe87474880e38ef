"""Throughput and latency of ``POST /programs/{name}/executions`` over HTTP.

The service: ``dspex.service.create_app`` with the ``mock`` backend (zero latency), every
execution recorded in a fresh SQLite database, one uvicorn worker (uvloop + httptools when
installed) on 127.0.0.1. Peer, measured in the same run under the same load: what teams write
today — a minimal FastAPI endpoint that calls the same one-predictor DSPy program through
``dspy.asyncify`` with ``dspy.utils.DummyLM`` (nothing recorded).

Load: a separate process (an asyncio httpx load generator) keeps ``CONCURRENCY`` requests in
flight on loopback for a bounded time and count, each with a distinct question (so the DummyLM
cache never answers); a warm-up precedes each measurement.

Targets: ≥ 500 req/s, p99 ≤ 50 ms, zero errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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


# -- the load generator (its own process) ------------------------------------------------------


async def _load(url: str, seconds: float, max_requests: int, concurrency: int) -> dict[str, Any]:
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
                body = {"inputs": {"question": f"what is item {sent}?"}}
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
        "p99_ms": round(pct(0.99), 2),
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


def _measure(kind: str, seconds: float, max_requests: int, workdir: str) -> dict[str, Any]:
    port = _free_port()
    script = str(Path(__file__).resolve())
    server = subprocess.Popen(
        [sys.executable, script, "_serve", kind, str(port), workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_up(port)
        url = f"http://127.0.0.1:{port}"
        load = [sys.executable, script, "_load", url]
        subprocess.run([*load, "1.0", "200"], check=True, capture_output=True)  # warm-up
        out = subprocess.run(
            [*load, str(seconds), str(max_requests)], check=True, capture_output=True, text=True
        )
        return dict(json.loads(out.stdout))
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
        print(json.dumps(asyncio.run(_load(url, seconds, max_requests, CONCURRENCY))))
        return 0

    from _common import Report, finish, parse_args

    args = parse_args(__doc__.splitlines()[0])
    seconds = 5.0 if args.quick else 15.0
    max_requests = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="dspex-bench-service-") as workdir:
        ours = _measure("dspex", seconds, max_requests, workdir)
    with tempfile.TemporaryDirectory(prefix="dspex-bench-peer-") as workdir:
        peer = _measure("peer", seconds, max_requests, workdir)
    report = Report("bench_service")
    report.metrics = {**ours, "concurrency": CONCURRENCY, "server": _uvicorn_options()}
    report.peer = {"name": "FastAPI + dspy.asyncify + DummyLM (not recorded)", **peer}
    report.ratios = {
        "rps_vs_peer": round(ours["rps"] / peer["rps"], 3) if peer["rps"] else 0.0,
        "p99_vs_peer": round(ours["p99_ms"] / peer["p99_ms"], 3) if peer["p99_ms"] else 0.0,
    }
    for label, data in (("dspex serve", ours), ("peer", peer)):
        report.row(f"{label} req/s", f"{data['rps']:.0f}", f"{data['requests']} requests")
        report.row(f"{label} p50", f"{data['p50_ms']:.1f} ms")
        report.row(f"{label} p99", f"{data['p99_ms']:.1f} ms")
        report.row(f"{label} errors", str(data["errors"]))
    report.target("throughput", ">= 500 req/s", ours["rps"], ours["rps"] >= 500)
    report.target("p99", "<= 50 ms", ours["p99_ms"], ours["p99_ms"] <= 50)
    report.target("errors", "== 0", ours["errors"], ours["errors"] == 0)
    return finish(report, args)


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

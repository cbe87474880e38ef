"""The service over HTTP: ``dspex serve`` against a FastAPI peer, both driven by ``wrk``.

Two views of ``POST /programs/{name}/executions``, each against its peer measured in the same
run under the same load:

1. **The real path** (the targets). ``dspex serve`` — the command, one process — runs a
   one-predictor program whose backend is ``kind = "openai"`` pointed at the loopback
   OpenAI-compatible server (``_loopback_responder.py``, its own process, answering in the
   ChatAdapter format after 20 ms); every execution is recorded in SQLite. Peer: what teams
   write today, a FastAPI endpoint awaiting ``dspy.Predict("question -> answer").acall`` over a
   ``dspy.LM`` on the same loopback server (uvicorn, one process, nothing recorded).
2. **The mock view.** ``dspex serve`` on the ``mock`` backend (no latency), recorded; peer: a
   FastAPI endpoint calling the same predictor through ``dspy.asyncify`` with ``DummyLM``.

Load: ``wrk`` (C, one thread, ``--latency``), a closed loop on 127.0.0.1 (each connection sends
its next request when the previous answer arrives), each request with a distinct question; an
answer counts as an error unless it is ``200`` with ``status: completed``. wrk is required:
``make bench`` installs it (Debian/Ubuntu: ``apt-get install -y wrk``). Without it this
benchmark fails: a Python load generator on the same small machine takes a core of its own and
measures itself, not the server.

Each server gets a warm-up first; then the servers of a view take turns, level by level, over
``ROUNDS`` rounds, and each keeps its median run. For every run the CPU seconds per request are
reported for the server under test (``/proc``), for wrk, and (real path) for the loopback LM
server, which shares the same cores, with how many of the machine's cores were busy meanwhile
(every process on it). After the real path, the executions the service recorded are counted
in its database: every answered request must be there, ``completed``.

Concurrency: the real-path targets are judged at ``HTTP_CONCURRENCY`` (32) connections in
flight; with a 20 ms LM, Little's law puts the ceiling at 1,600 executions/s there, and a
closed loop's latency grows with the connections once the server is saturated
(p50 ≈ connections / throughput). The sweeps show the whole curve for both servers.

Targets (real path, at ``HTTP_CONCURRENCY``): ≥ 1,000 recorded executions/s, p99 ≤ 60 ms,
zero errors, ≥ 2× the peer's throughput. Mock view (at ``MOCK_CONCURRENCY``, 16): ≥ 500
req/s, p99 ≤ 50 ms, zero errors.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

SIGNATURE = "question: str -> answer: str"
SPEC: dict[str, Any] = {
    "name": "qa",
    "signature": SIGNATURE,
    "modules": {"answer": {"kind": "predict", "signature": SIGNATURE}},
}
PATH = "/programs/qa/executions"
HTTP_LATENCY = 0.02
HTTP_MODEL = "bench-model"
HTTP_CONCURRENCY = 32
HTTP_SWEEP: tuple[int, ...] = (16, 32, 48, 64)
MOCK_CONCURRENCY = 16
MOCK_SWEEP: tuple[int, ...] = (8, 16, 32)
ROUNDS = 3
WRK_MISSING = (
    "bench_service needs wrk, the HTTP load generator (a Python generator on these cores would "
    "measure itself, not the server). `make bench` installs it; by hand on Debian/Ubuntu: "
    "apt-get install -y wrk (elsewhere: https://github.com/wg/wrk)."
)


# -- the peers (each runs in its own process) --------------------------------------------------


class PeerBody(BaseModel):
    """The peer endpoint's request body (the same JSON the service takes)."""

    inputs: dict[str, str]


def _uvicorn_options() -> dict[str, Any]:
    """What ``dspex serve`` gets from uvicorn's defaults: uvloop and httptools when installed."""
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


def serve_peer(port: int, base_url: str) -> None:
    """The peer: FastAPI + ``Predict.acall`` over ``dspy.LM`` (``base_url``), or over
    ``dspy.asyncify`` with ``DummyLM`` when ``base_url`` is ``mock``."""
    import dspy
    import uvicorn
    from fastapi import FastAPI

    predict = dspy.Predict("question -> answer")
    if base_url == "mock":
        from dspy.utils import DummyLM

        dspy.configure(lm=DummyLM({"question": {"answer": "42"}}))
        program = dspy.asyncify(predict)
    else:
        # what a DSPy user builds for an OpenAI-compatible endpoint (response cache off: every
        # question is new anyway, and the peer should not pay for writing it)
        lm = dspy.LM(f"openai/{HTTP_MODEL}", api_base=base_url, api_key="bench", cache=False)
        dspy.configure(lm=lm)
        program = predict.acall
    app = FastAPI()

    @app.post(PATH)
    async def run(body: PeerBody) -> dict[str, Any]:
        prediction = await program(question=body.inputs["question"])
        return {"status": "completed", "outputs": {"answer": prediction.answer}}

    uvicorn.run(app, host="127.0.0.1", port=port, **_uvicorn_options())


# -- wrk ---------------------------------------------------------------------------------------

# One thread: a distinct question per request (``prefix`` keeps them distinct across runs
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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
    cpu0 = _children_cpu()
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    wrk_cpu = _children_cpu() - cpu0
    line = next(x for x in out.splitlines() if x.startswith("DSPEX_RESULT "))
    raw = json.loads(line.removeprefix("DSPEX_RESULT "))
    wall = raw["duration_us"] / 1e6
    errors = raw["bad"] + raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    requests = raw["requests"]
    return {
        "requests": requests,
        "errors": errors,
        "wall_s": round(wall, 3),
        "rps": round(requests / wall, 1) if wall else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p75_ms": round(raw["p75_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "wrk_cpu_ms_per_request": round(wrk_cpu / max(1, requests) * 1000, 4),
    }


# -- the servers under load --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"the server on port {port} exited: {err[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the server on port {port} did not start")


def _process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # not Linux
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """One server under test, started by ``command`` in ``cwd``."""

    label: str
    command: list[str]
    cwd: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DSPEX_CONFIG"}
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_up(self.port, self.proc)

    def cpu(self) -> float:
        assert self.proc is not None
        return _process_cpu(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _machine_busy() -> tuple[int, int]:
    """Clock ticks every CPU of the machine spent busy, and all its ticks (Linux; else 0s)."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):  # not Linux
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:  # not Linux
        return "n/a"


def _run_once(
    server: Server,
    concurrency: int,
    seconds: float,
    prefix: str,
    script: Path,
    lm_stats: Callable[[], dict[str, Any]] | None,
) -> dict[str, Any]:
    """One wrk run against ``server`` with the CPU each process spent on it."""
    before, cpu0, machine0 = _loadavg(), server.cpu(), _machine_busy()
    lm0 = lm_stats() if lm_stats else None
    result = _wrk(server.url, seconds, concurrency, prefix, script)
    requests = max(1, result["requests"])
    result["server_cpu_ms_per_request"] = round((server.cpu() - cpu0) / requests * 1000, 4)
    busy, total = _machine_busy()
    ticks = total - machine0[1]
    cores = (busy - machine0[0]) / ticks * (os.cpu_count() or 1) if ticks > 0 else 0.0
    # every process on the machine: the server, the LM server, wrk, and anything else
    result["machine_busy_cores"] = round(cores, 3)
    if lm_stats is not None and lm0 is not None:
        lm1 = lm_stats()
        result["lm_server_cpu_ms_per_request"] = round(
            (lm1["cpu"] - lm0["cpu"]) / max(1, lm1["requests"] - lm0["requests"]) * 1000, 4
        )
    result["loadavg_before"] = before
    return result


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (its other figures with it), and every run's."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return {**ordered[len(ordered) // 2], "all_rps": [r["rps"] for r in runs]}


def _compare(
    servers: Sequence[Server],
    levels: Sequence[int],
    warm_at: int,
    seconds: float,
    rounds: int,
    workdir: Path,
    lm_stats: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """Start the servers, warm each up, then let them take turns level by level; medians."""
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {
        s.label: {c: [] for c in levels} for s in servers
    }
    try:
        for server in servers:
            server.start()
            _wrk(server.url, 2.0, warm_at, "warm", script)
        for r in range(rounds):
            for concurrency in levels:
                for server in servers:
                    prefix = f"r{r}c{concurrency}"
                    found = _run_once(server, concurrency, seconds, prefix, script, lm_stats)
                    runs[server.label][concurrency].append(found)
    finally:
        for server in servers:
            server.stop()
    return {
        label: {c: _median(found) for c, found in by_level.items()}
        for label, by_level in runs.items()
    }


def _dspex_server(workdir: Path, backend: dict[str, Any] | None) -> Server:
    """``dspex serve`` in ``workdir``: its ``dspex.toml`` names ``backend`` as the default (none:
    the mock backend); the program registered and initialized with the command first."""
    import yaml

    workdir.mkdir(parents=True, exist_ok=True)
    if backend is not None:
        lines = ["[backends.default]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in backend.items()]
        (workdir / "dspex.toml").write_text("\n".join(lines) + "\n")
    (workdir / "qa.yaml").write_text(yaml.safe_dump(SPEC))
    dspex = [sys.executable, "-m", "dspex"]
    env = {k: v for k, v in os.environ.items() if k != "DSPEX_CONFIG"}
    subprocess.run(
        [*dspex, "program", "register", "qa.yaml", "--init"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
    )
    port = _free_port()
    command = [*dspex, "serve", "--port", str(port), "--log-level", "warning"]
    return Server("dspex serve", command, workdir, port)


def _peer_server(workdir: Path, base_url: str) -> Server:
    port = _free_port()
    me = str(Path(__file__).resolve())
    return Server("peer", [sys.executable, me, "_serve", str(port), base_url], workdir, port)


def _recorded(database: Path) -> dict[str, int]:
    """Executions in the service's database, by status."""
    with sqlite3.connect(database) as conn:
        rows = conn.execute("SELECT status, count(*) FROM executions GROUP BY status").fetchall()
    return {str(status): int(count) for status, count in rows}


def _rows(report: Any, view: str, label: str, data: dict[int, dict[str, Any]], mark: int) -> None:
    for c, r in data.items():
        lm = r.get("lm_server_cpu_ms_per_request")
        report.row(
            f"{view}: {label} c={c}",
            f"{r['rps']:.0f} req/s",
            f"p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f}  max {r['max_ms']:.1f}  "
            f"errors {r['errors']}  CPU/request: server {r['server_cpu_ms_per_request']:.2f} ms"
            + (f", LM server {lm:.3f}" if lm is not None else "")
            + f", wrk {r['wrk_cpu_ms_per_request']:.3f}  machine busy "
            f"{r['machine_busy_cores']:.2f} cores, load {r['loadavg_before']}"
            + ("  <- targets" if c == mark and label == "dspex serve" else ""),
        )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_peer(int(sys.argv[2]), sys.argv[3])
        return 0

    from _common import Report, finish, parse_args

    args = parse_args(__doc__.splitlines()[0])
    if shutil.which("wrk") is None:
        print(f"error: {WRK_MISSING}", file=sys.stderr)
        return 2
    import _loopback_responder as responder

    seconds = 3.0 if args.quick else 6.0
    rounds = 1 if args.quick else ROUNDS
    http_levels = (HTTP_CONCURRENCY,) if args.quick else HTTP_SWEEP
    mock_levels = (MOCK_CONCURRENCY,) if args.quick else MOCK_SWEEP
    report = Report("bench_service")
    with tempfile.TemporaryDirectory(prefix="dspex-bench-service-") as raw:
        tmp = Path(raw)
        # 1. the real path: the openai backend against the loopback LM server
        lm_proc, base_url = responder.start(HTTP_LATENCY)
        try:
            backend = {
                "kind": "openai",
                "base_url": base_url,
                "model": HTTP_MODEL,
                "max_connections": 2 * max(HTTP_SWEEP),
            }
            ours = _dspex_server(tmp / "http", backend)
            peer = _peer_server(tmp / "http", base_url)
            http = _compare(
                [ours, peer],
                http_levels,
                HTTP_CONCURRENCY,
                seconds,
                rounds,
                tmp,
                lambda: responder.stats(base_url),
            )
        finally:
            responder.stop(lm_proc)
        recorded = _recorded(tmp / "http" / ".dspex" / "dspex.db")
        # 2. the mock view
        mock = _compare(
            [_dspex_server(tmp / "mock", None), _peer_server(tmp / "mock", "mock")],
            mock_levels,
            MOCK_CONCURRENCY,
            seconds,
            rounds,
            tmp,
        )
    ours_http, peer_http = http["dspex serve"], http["peer"]
    target, target_peer = ours_http[HTTP_CONCURRENCY], peer_http[HTTP_CONCURRENCY]
    ours_mock, peer_mock = mock["dspex serve"][MOCK_CONCURRENCY], mock["peer"][MOCK_CONCURRENCY]
    answered = sum(r["requests"] - r["errors"] for r in ours_http.values())
    report.metrics = {
        "http": {
            **target,
            "concurrency": HTTP_CONCURRENCY,
            "lm_latency_s": HTTP_LATENCY,
            "recorded_by_status": recorded,
            "sweep": {str(c): r for c, r in ours_http.items()},
        },
        "mock": {
            **ours_mock,
            "concurrency": MOCK_CONCURRENCY,
            "sweep": {str(c): r for c, r in mock["dspex serve"].items()},
        },
        "load_generator": "wrk",
        "seconds_per_run": seconds,
        "rounds": rounds,
        "server": "dspex serve (one process)",
    }
    report.peer = {
        "http": {
            "name": "FastAPI + Predict.acall over dspy.LM (not recorded)",
            **target_peer,
            "sweep": {str(c): r for c, r in peer_http.items()},
        },
        "mock": {
            "name": "FastAPI + dspy.asyncify + DummyLM (not recorded)",
            **peer_mock,
            "sweep": {str(c): r for c, r in mock["peer"].items()},
        },
        "uvicorn": _uvicorn_options(),
    }
    http_ratio = target["rps"] / target_peer["rps"] if target_peer["rps"] else 0.0
    report.ratios = {
        "http_rps_vs_peer": round(http_ratio, 3),
        "http_p99_vs_peer": round(target["p99_ms"] / target_peer["p99_ms"], 3)
        if target_peer["p99_ms"]
        else 0.0,
        "mock_rps_vs_peer": round(ours_mock["rps"] / peer_mock["rps"], 3)
        if peer_mock["rps"]
        else 0.0,
    }
    report.row(
        "load",
        "wrk",
        f"{seconds:.0f} s per run, {rounds} round(s), medians; LM server answers after "
        f"{HTTP_LATENCY * 1000:.0f} ms",
    )
    _rows(report, "openai 20ms", "dspex serve", ours_http, HTTP_CONCURRENCY)
    _rows(report, "openai 20ms", "peer", peer_http, HTTP_CONCURRENCY)
    report.row(
        "recorded (real path)",
        f"{recorded.get('completed', 0)} completed",
        f"{answered} answered by the service in the measured runs; by status {recorded}",
    )
    _rows(report, "mock", "dspex serve", mock["dspex serve"], MOCK_CONCURRENCY)
    _rows(report, "mock", "peer", mock["peer"], MOCK_CONCURRENCY)
    report.target("http_throughput", ">= 1000 req/s", target["rps"], target["rps"] >= 1000)
    report.target("http_p99", "<= 60 ms", target["p99_ms"], target["p99_ms"] <= 60)
    report.target("http_errors", "== 0", target["errors"], target["errors"] == 0)
    report.target("http_vs_peer", ">= 2.0", http_ratio, http_ratio >= 2.0)
    all_recorded = recorded.get("completed", 0) >= answered
    report.target("http_all_recorded", "every answer recorded", answered, all_recorded)
    report.target("mock_throughput", ">= 500 req/s", ours_mock["rps"], ours_mock["rps"] >= 500)
    report.target("mock_p99", "<= 50 ms", ours_mock["p99_ms"], ours_mock["p99_ms"] <= 50)
    report.target("mock_errors", "== 0", ours_mock["errors"], ours_mock["errors"] == 0)
    return finish(report, args)


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

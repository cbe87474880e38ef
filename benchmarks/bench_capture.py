"""What full traces cost: a recorded batch with step inputs and outputs captured, against the
same batch with capture off (the peer), in the same run.

Items run through ``run_batch`` on the ``mock`` backend with no latency (so the runtime's own
cost is all there is), concurrency 64, every execution recorded in SQLite. Two cases: a short
question (the usual shape: nothing to redact or cut, recorded as it is), and a 2 KB question
next to a ``sensitive`` field (redaction runs, each record is a copy). The
contenders alternate over five rounds in one process and keep their medians; the cost of
capture is reported per item (CPU and wall microseconds) and as a ratio to capture off.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import Report, finish, parse_args

FIELDS: dict[str, Any] = {
    "inputs": {"question": "str", "account": {"type": "str", "sensitive": True}},
    "outputs": {"answer": "str"},
}
PLAIN: dict[str, Any] = {
    "inputs": {"question": "str", "account": "str"},
    "outputs": {"answer": "str"},
}


def _program(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "qa",
        "signature": fields,
        "modules": {"answer": {"kind": "predict", "signature": fields}},
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _batch(db: Path, n: int, capture: bool, size: int, sensitive: bool) -> dict[str, float]:
    import dspex
    from dspex.backends.mock import MockBackend
    from dspex.config import CaptureSettings, Settings
    from dspex.store import open_store

    settings = Settings(capture=CaptureSettings(inputs_outputs=capture))
    store = open_store(f"sqlite:///{db}")
    async with dspex.Runtime(settings, store, backends={"default": MockBackend()}) as rt:
        info = await rt.register(_program(FIELDS if sensitive else PLAIN))
        await rt.initialize(info.name, info.version)
        text = "x" * size
        items = [{"question": f"{i} {text}", "account": f"acct-{i}"} for i in range(n)]
        await rt.run_batch("qa", items[:200], max_concurrency=64)  # warm-up
        cpu0, t0 = _cpu(), time.perf_counter()
        result = await rt.run_batch("qa", items, max_concurrency=64)
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        steps = await rt.store.list_steps(result.results[-1].execution_id or "")
    assert result.stats.completed == n, result.stats
    recorded = steps[0].inputs
    assert (recorded is not None) is capture
    if recorded is not None:
        assert (recorded["account"] == "[redacted]") is sensitive
    return {"wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6}


def main() -> int:
    args = parse_args(__doc__ or "")
    n = 2_000 if args.quick else 10_000
    report = Report("capture")
    with tempfile.TemporaryDirectory() as tmp:
        for label, size, sensitive in (("short", 16, False), ("2kb_sensitive", 2048, True)):
            runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for round_ in range(5):
                for capture in (False, True) if round_ % 2 == 0 else (True, False):
                    db = Path(tmp) / f"{label}-{round_}-{capture}.db"
                    runs[capture].append(asyncio.run(_batch(db, n, capture, size, sensitive)))
            on = {k: statistics.median(r[k] for r in runs[True]) for k in ("wall_us", "cpu_us")}
            off = {k: statistics.median(r[k] for r in runs[False]) for k in ("wall_us", "cpu_us")}
            report.metrics[f"{label}_capture_on"] = on
            report.peer[f"{label}_capture_off"] = off
            report.ratios[f"{label}_cpu_on_vs_off"] = on["cpu_us"] / off["cpu_us"]
            report.ratios[f"{label}_wall_on_vs_off"] = on["wall_us"] / off["wall_us"]
            report.metrics[f"{label}_cpu_us_per_item_added"] = on["cpu_us"] - off["cpu_us"]
            report.row(f"{label}: capture off (peer)", f"{off['cpu_us']:.1f} us", "CPU per item")
            report.row(f"{label}: capture on", f"{on['cpu_us']:.1f} us", "CPU per item")
            report.row(
                f"{label}: on / off",
                f"{on['cpu_us'] / off['cpu_us']:.3f}x",
                f"wall {on['wall_us'] / off['wall_us']:.3f}x, +{on['cpu_us'] - off['cpu_us']:.1f}"
                " us CPU per item",
            )
        cost = report.ratios["short_cpu_on_vs_off"]
        report.target("short_cpu_on_vs_off", "<= 1.10", cost, cost <= 1.10)
    return finish(report, args)


if __name__ == "__main__":
    sys.exit(main())

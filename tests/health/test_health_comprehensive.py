"""Comprehensive health: recent performance, error patterns and capacity from recorded runs."""

from __future__ import annotations

from tests.runtime._support import QA, make_runtime, ready

from dspex.backends.mock import MockBackend
from dspex.runtime import Runtime
from dspex.store import MemoryStore


def _runtime() -> Runtime:
    backends = {
        "default": MockBackend("default"),
        "broken": MockBackend("broken", permanent_failure_rate=1.0),
    }
    return make_runtime(MemoryStore(), backends)


async def _runs(rt: Runtime, ok: int, failed: int) -> None:
    await ready(rt, QA)
    for i in range(ok):
        assert (await rt.execute("qa", {"question": f"q{i}"})).status == "completed"
    for i in range(failed):
        result = await rt.execute("qa", {"question": f"f{i}"}, backend="broken")
        assert result.status == "failed"


async def test_comprehensive_adds_performance_errors_and_capacity() -> None:
    async with _runtime() as rt:
        await _runs(rt, 3, 1)
        report = await rt.health("comprehensive")
    assert [c.name for c in report.checks][-3:] == ["performance", "errors", "capacity"]
    (program,) = report.check("performance").details["programs"]
    assert (program["program"], program["executions"], program["failed"]) == ("qa", 4, 1)
    assert program["success_rate"] == 0.75
    assert program["p50_ms"] is not None
    assert program["p95_ms"] >= program["p50_ms"]
    capacity = report.check("capacity").details
    assert capacity["executions_last_hour"] == 4
    assert capacity["observed_max_per_minute"] == 4


async def test_error_patterns_name_the_top_codes_and_recent_failures() -> None:
    async with _runtime() as rt:
        await _runs(rt, 0, 2)
        errors = (await rt.health("deep")).check("errors").details
    (top,) = errors["top_error_codes"]
    assert top["count"] == 2
    assert len(errors["recent_failures"]) == 2
    assert errors["recent_failures"][0]["error_code"] == top["code"]


async def test_a_program_that_fails_often_degrades_performance_and_errors() -> None:
    async with _runtime() as rt:
        await _runs(rt, 2, 10)
        report = await rt.health("comprehensive")
    assert report.check("performance").status == "degraded"
    assert "qa" in report.check("performance").reason
    assert report.check("errors").status == "degraded"
    assert report.status == "degraded"
    assert len(report.recommendations) >= 2


async def test_a_quiet_runtime_has_healthy_statistics() -> None:
    async with _runtime() as rt:
        report = await rt.health("comprehensive")
    assert report.status == "healthy"
    assert report.check("performance").details["programs"] == []
    assert report.check("capacity").details["load_vs_max"] == 0.0

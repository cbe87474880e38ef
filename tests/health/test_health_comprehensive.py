"""Comprehensive health: recent performance, error patterns and capacity from recorded runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.runtime._support import QA, make_runtime, ready

from dspex.backends.mock import MockBackend
from dspex.records import ExecutionStatus
from dspex.runtime import Runtime
from dspex.store import MemoryStore
from dspex.store._maintenance import ExecutionSample


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


def _sample(i: int, age: timedelta, ms: float, ok: bool = True) -> ExecutionSample:
    created = NOW - age
    return ExecutionSample(
        id=f"e{i}",
        program="qa",
        program_version=1,
        status=ExecutionStatus.COMPLETED if ok else ExecutionStatus.FAILED,
        error_code=None if ok else "timeout",
        error_message=None,
        created_at=created,
        finished_at=created + timedelta(milliseconds=ms),
        duration_ms=ms,
    )


async def _trend_of(samples: list[ExecutionSample]) -> tuple[str, str, dict[str, Any]]:
    from dspex.actions.health import _trends

    future: asyncio.Future[list[ExecutionSample]] = asyncio.get_running_loop().create_future()
    future.set_result(samples)
    outcome = await _trends(future, NOW)
    assert outcome.details is not None
    (program,) = outcome.details["programs"]
    return outcome.status, outcome.reason, program


NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)


async def test_deep_adds_trends_to_comprehensive() -> None:
    async with _runtime() as rt:
        await _runs(rt, 3, 0)
        deep = await rt.health("deep")
        comprehensive = await rt.health("comprehensive")
    assert [c.name for c in deep.checks][-1] == "trends"
    assert "trends" not in [c.name for c in comprehensive.checks]
    (program,) = deep.check("trends").details["programs"]
    assert (program["recent_executions"], program["earlier_executions"]) == (3, 0)
    assert program["p95_ratio"] is None  # nothing earlier to compare with


async def test_a_program_slower_today_than_this_week_is_a_degraded_trend() -> None:
    week = [_sample(i, timedelta(days=3), 100.0) for i in range(40)]
    today = [_sample(100 + i, timedelta(hours=2), 400.0) for i in range(20)]
    status, reason, program = await _trend_of(week + today)
    assert status == "degraded"
    assert "qa is slower" in reason
    assert program["recent_p95_ms"] == 400.0
    assert program["p95_ratio"] >= 1.5


async def test_a_program_failing_more_today_is_a_degraded_trend() -> None:
    week = [_sample(i, timedelta(days=2), 100.0) for i in range(40)]
    today = [_sample(100 + i, timedelta(hours=1), 100.0, ok=i % 2 == 0) for i in range(20)]
    status, reason, program = await _trend_of(week + today)
    assert status == "degraded"
    assert "qa fails more" in reason
    assert program["recent_success_rate"] == 0.5


async def test_a_steady_program_or_too_few_recent_runs_is_a_healthy_trend() -> None:
    week = [_sample(i, timedelta(days=2), 100.0) for i in range(40)]
    steady = [_sample(100 + i, timedelta(hours=1), 110.0) for i in range(20)]
    assert (await _trend_of(week + steady))[0] == "healthy"
    few = [_sample(100 + i, timedelta(hours=1), 900.0, ok=False) for i in range(3)]
    assert (await _trend_of(week + few))[0] == "healthy"
    status, _, program = await _trend_of(week)  # nothing in the last 24 hours
    assert status == "healthy"
    assert program["recent_p95_ms"] is None

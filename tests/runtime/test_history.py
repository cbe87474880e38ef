"""History: module timings, critical paths and bottlenecks, pure and from recorded runs.

The recorded runs use mock-backend latencies under looptime, so every duration is exact.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.runtime._support import DIAMOND, QA, changed, make_runtime, ready, slow

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.engine.history import (
    median_durations,
    run_critical_path,
    summarize,
)
from dspex.errors import BadRequestError, NotFoundError
from dspex.records import StepRecord, StepStatus
from dspex.reports import critical_path_from_steps, graph_report_from_info
from dspex.runtime import Runtime
from dspex.store import MemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEPS = {"a": (), "b": (), "c": ("a",), "d": ("b", "c")}


def step(
    run: str, module: str, start_ms: float, end_ms: float, status: StepStatus = StepStatus.COMPLETED
) -> StepRecord:
    return StepRecord(
        module=module,
        status=status,
        started_at=T0 + timedelta(milliseconds=start_ms),
        ended_at=T0 + timedelta(milliseconds=end_ms),
        duration_ms=end_ms - start_ms,
        execution_id=run,
    )


def diamond_run(run: str, b_ms: float) -> list[StepRecord]:
    """a 0-100, b 0-b_ms, c 100-200, d after b and c for 100 ms."""
    d_start = max(b_ms, 200.0)
    return [
        step(run, "a", 0, 100),
        step(run, "b", 0, b_ms),
        step(run, "c", 100, 200),
        step(run, "d", d_start, d_start + 100),
    ]


def test_critical_path_walks_back_through_the_dependency_that_ended_last() -> None:
    assert run_critical_path(diamond_run("r", 300), DEPS) == ("b", "d")
    assert run_critical_path(diamond_run("r", 150), DEPS) == ("a", "c", "d")


def test_critical_path_of_a_run_where_nothing_ran_is_empty() -> None:
    skipped = StepRecord(module="a", status=StepStatus.SKIPPED, execution_id="r")
    assert run_critical_path([skipped], DEPS) == ()


def test_most_frequent_critical_path_wins() -> None:
    steps = [
        *diamond_run("r1", 300),
        *diamond_run("r2", 300),
        *diamond_run("r3", 150),
    ]
    summary = summarize(steps, DEPS)
    assert summary.runs == 3
    assert summary.critical_path == ("b", "d")


def test_module_statistics_and_critical_share() -> None:
    steps = [*diamond_run("r1", 300), *diamond_run("r2", 500)]
    summary = summarize(steps, DEPS)
    by = {m.module: m for m in summary.modules}
    assert [m.module for m in summary.modules] == ["a", "b", "c", "d"]
    assert (by["b"].runs, by["b"].p50_ms) == (2, 400.0)
    assert by["b"].p95_ms == pytest.approx(490.0)
    assert by["a"].success_rate == 1.0
    # critical time: b 300 + 500, d 100 + 100 → b has 0.8 of it
    assert by["b"].critical_share == pytest.approx(0.8)
    assert by["d"].critical_share == pytest.approx(0.2)
    assert by["a"].critical_share == 0.0
    assert [(b.module, b.reason) for b in summary.bottlenecks] == [
        ("b", "critical_path"),
        ("d", "critical_path"),
        ("b", "slowest_p95"),
    ]


def test_failed_steps_lower_the_success_rate() -> None:
    steps = [step("r1", "a", 0, 10), step("r2", "a", 0, 10, StepStatus.FAILED)]
    (stats,) = summarize(steps, {"a": ()}).modules
    assert stats.success_rate == 0.5


def test_median_durations_ignore_modules_that_never_started() -> None:
    steps = [
        step("r1", "a", 0, 10),
        step("r2", "a", 0, 30),
        StepRecord(module="b", status=StepStatus.SKIPPED, execution_id="r1"),
    ]
    assert median_durations(steps) == {"a": 20.0}


@pytest.mark.looptime
async def test_history_of_scripted_runs_finds_the_slow_branch() -> None:
    async with make_runtime(MemoryStore(), {"default": MockBackend("default")}) as rt:
        await ready(rt, DIAMOND)
        for _ in range(3):
            result = await rt.execute("diamond", {"q": "go"})
            assert result.status == "completed"
            assert result.duration_ms == pytest.approx(400.0)
        history = await rt.history("diamond")
    assert history.executions == 3
    assert history.success_rate == 1.0
    by = {m.module: m for m in history.modules}
    assert {m: by[m].runs for m in by} == {"a": 3, "b": 3, "c": 3, "d": 3}
    medians = {m: by[m].p50_ms for m in by}
    assert medians == pytest.approx({"a": 100.0, "b": 300.0, "c": 100.0, "d": 100.0})
    assert history.critical_path == ["b", "d"]
    assert by["b"].critical_share == pytest.approx(0.75)
    assert history.bottlenecks[0].module == "b"


@pytest.mark.looptime
async def test_graph_plan_uses_recorded_durations() -> None:
    async with make_runtime(MemoryStore()) as rt:
        await ready(rt, DIAMOND)
        before = await rt.graph("diamond")
        await rt.execute("diamond", {"q": "go"})
        after = await rt.graph("diamond")
    assert before.plan["durations_ms"]["b"] == 500.0  # the per-kind estimate
    assert after.plan["durations_ms"]["b"] == pytest.approx(300.0)
    assert after.plan["critical_path"] == ["b", "d"]
    assert [m.depends_on for m in after.modules] == [[], [], ["a"], ["b", "c"]]


# a(100) and b(50, after x's 50) end together; c waits for both. The rule (one for every view)
# gives the tie to the longer step, a, whatever order the dependencies are listed in.
TIE: dict[str, Any] = {
    "name": "tie",
    "signature": "q: str -> y: str",
    "modules": {
        "x": slow("q: str -> x1: str", 50),
        "b": slow("x1: str -> b1: str", 50, inputs={"x1": "x.x1"}),
        "a": slow("q: str -> a1: str", 100),
        "c": slow("b1: str, a1: str -> y: str", 10, inputs={"b1": "b.b1", "a1": "a.a1"}),
    },
}


async def _gantt_path(rt: Runtime, program: str) -> tuple[str, ...]:
    """The run critical path that ``dspex graph --html`` and the dashboard draw."""
    report = graph_report_from_info(await rt.graph(program))
    assert report.run is not None
    deps = {m.name: m.depends_on for m in report.modules}
    return critical_path_from_steps(report.run.steps, deps)


@pytest.mark.looptime
async def test_history_and_the_graph_report_agree_on_a_run_whose_branches_end_together() -> None:
    async with make_runtime(MemoryStore()) as rt:
        await ready(rt, TIE)
        assert (await rt.execute("tie", {"q": "go"})).status == "completed"
        history = await rt.history("tie")
        drawn = await _gantt_path(rt, "tie")
    assert tuple(history.critical_path) == drawn == ("a", "c")


async def _module_c_fails_after_its_latency(request: PredictRequest) -> dict[str, Any]:
    await asyncio.sleep(float(request.config["mock_latency_ms"]) / 1000.0)
    if request.module == "c":
        raise BadRequestError("c cannot answer", status=400)
    return {name: f"{request.module} says {name}" for name in request.signature.output_names}


@pytest.mark.looptime
async def test_history_and_the_graph_report_agree_on_a_run_that_a_failure_ended() -> None:
    # a 0-100, b 0-150, c 100-200 fails, d (after b and c) is skipped: the failure ended the run
    modules = {**DIAMOND["modules"], "b": slow("q: str -> b1: str", 150)}
    spec = changed(DIAMOND, modules=modules, failure_tolerance="tolerant")
    backend = MockBackend("default", handler=_module_c_fails_after_its_latency)
    async with make_runtime(MemoryStore(), {"default": backend}) as rt:
        await ready(rt, spec)
        assert (await rt.execute("diamond", {"q": "go"})).status == "failed"
        history = await rt.history("diamond")
        drawn = await _gantt_path(rt, "diamond")
    assert tuple(history.critical_path) == drawn == ("a", "c")


@pytest.mark.looptime
async def test_execute_returns_the_steps_that_get_execution_reads_back() -> None:
    # one conversion from the step records: a skipped step never started, so has no duration
    modules = {**DIAMOND["modules"], "b": slow("q: str -> b1: str", 150)}
    spec = changed(DIAMOND, modules=modules, failure_tolerance="tolerant")
    backend = MockBackend("default", handler=_module_c_fails_after_its_latency)
    async with make_runtime(MemoryStore(), {"default": backend}) as rt:
        await ready(rt, spec)
        result = await rt.execute("diamond", {"q": "go"})
        detail = await rt.get_execution(result.execution_id)
    returned = [s.model_dump(exclude={"backend"}) for s in result.steps]
    assert returned == [s.model_dump(exclude={"backend"}) for s in detail.steps]
    by = {s.module: s for s in result.steps}
    assert by["c"].status == "failed"
    assert by["d"].status == "skipped"
    assert by["d"].started_ms is by["d"].duration_ms is None


async def test_a_batch_profile_belongs_to_its_own_program() -> None:
    async with make_runtime(MemoryStore()) as rt:
        await ready(rt, QA)
        await ready(rt, {**QA, "name": "other"})
        result = await rt.run_batch("qa", [{"question": f"q{i}?"} for i in range(3)])
        profile = (await rt.graph("qa", batch_id=result.batch_id)).batch
        assert profile is not None
        assert (profile.items, [m.module for m in profile.modules]) == (3, ["answer"])
        with pytest.raises(NotFoundError, match="is a batch of 'qa', not 'other'"):
            await rt.graph("other", batch_id=result.batch_id)

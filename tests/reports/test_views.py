"""``graph_report_from_info``: a program's graph info (model or dict) as the reports' views."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dspex.actions.models import StepInfo
from dspex.reports import GraphReport, ModuleView, graph_report_from_info

STARTED = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def info(last_run: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "program": "rag",
        "version": 2,
        "plan": {
            "levels": [["retrieve"], ["answer"]],
            "critical_path": ["retrieve", "answer"],
            "width": 1,
            "estimated_makespan": 30.0,
            "durations_ms": {"retrieve": 10.0, "answer": 20.0},
            "duration_sources": {"retrieve": "spec", "answer": "recorded"},
            "slack": {"retrieve": 0.0, "answer": 0.0},
        },
        "modules": [
            {"name": "retrieve", "kind": "retrieve", "depends_on": [], "backend": None},
            {"name": "answer", "kind": "predict", "depends_on": ["retrieve"], "backend": "default"},
        ],
        "last_run": last_run,
    }


def run(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "execution_id": "e1",
        "status": "completed",
        "duration_ms": 31.5,
        "created_at": STARTED,
        "started_at": STARTED,
        "steps": [
            {
                "module": "retrieve",
                "status": "completed",
                "started_ms": 0.0,
                "ended_ms": 10.0,
                "duration_ms": 10.0,
                "attempts": 1,
                "error_code": None,
            },
            {
                "module": "answer",
                "status": "failed",
                "started_ms": 10.0,
                "ended_ms": None,
                "duration_ms": None,
                "attempts": 3,
                "error_code": "timeout",
            },
        ],
    }
    return {**base, **changes}


def test_modules_carry_their_level_estimate_slack_and_backend() -> None:
    report = graph_report_from_info(info())
    assert isinstance(report, GraphReport)
    assert report.modules[1] == ModuleView(
        name="answer",
        kind="predict",
        depends_on=("retrieve",),
        level=1,
        estimated_ms=20.0,
        slack_ms=0.0,
        backend="default",
        estimate_source="recorded",
    )
    assert (report.levels, report.critical_path, report.width) == (
        (("retrieve",), ("answer",)),
        ("retrieve", "answer"),
        1,
    )
    assert report.run is None


def test_the_last_run_becomes_gantt_steps() -> None:
    report = graph_report_from_info(info(run()))
    assert report.run is not None
    assert report.run.started_at == "2025-03-04 05:06:07 UTC"
    # the runtime's own step model, as recorded
    assert report.run.steps[1] == StepInfo(
        module="answer",
        status="failed",
        started_ms=10.0,
        ended_ms=None,
        duration_ms=None,
        attempts=3,
        error_code="timeout",
    )


def test_a_run_that_never_started_is_dated_by_its_creation_in_iso_text() -> None:
    report = graph_report_from_info(info(run(started_at=None, created_at=STARTED.isoformat())))
    assert report.run is not None
    assert report.run.started_at == "2025-03-04 05:06:07 UTC"


def test_a_model_is_read_through_its_model_dump() -> None:
    class Dumps:
        def model_dump(self) -> dict[str, Any]:
            return info(run())

    assert graph_report_from_info(Dumps()) == graph_report_from_info(info(run()))


def test_a_module_missing_from_the_levels_is_drawn_on_the_first() -> None:
    data = info()
    data["plan"] = {}
    report = graph_report_from_info(data)
    assert [m.level for m in report.modules] == [0, 0]
    assert report.width == 0

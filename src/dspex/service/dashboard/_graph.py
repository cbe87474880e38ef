"""The dashboard's view of a program graph: the server-rendered DAG and Gantt SVGs.

The drawings are the ones ``dspex graph --html`` writes (:mod:`dspex.reports.html`), so the page
and the offline report always agree; this module only converts the runtime's
:class:`~dspex.runtime.GraphInfo` into the reports' plain views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspex.reports.html import (
    ModuleView,
    StepView,
    critical_path_from_steps,
    dag_svg,
    gantt_svg,
)

if TYPE_CHECKING:
    from dspex.runtime import ExecutionDetail, GraphInfo

__all__ = ["graph_payload"]

_GANTT_WIDTH = 900  # fits the graph column of the programs panel at 1280 px


def graph_payload(info: GraphInfo) -> dict[str, Any]:
    """The JSON the page draws a program's graph from.

    Args:
        info: the program's plan and last run, from ``Runtime.graph``.

    Returns:
        ``program``, ``version``, ``critical_path`` (planned), ``levels``, ``width``,
        ``estimated_makespan_ms``, ``dag_svg``, and for the last run ``last_run`` (a summary or
        ``None``), ``run_critical_path`` (from its actual timings) and ``gantt_svg`` (or
        ``None``).
    """
    plan = info.plan
    levels = [list(names) for names in plan.get("levels", [])]
    level_of = {name: index for index, names in enumerate(levels) for name in names}
    durations: dict[str, Any] = plan.get("durations_ms", {})
    slack: dict[str, Any] = plan.get("slack", {})
    modules = [
        ModuleView(
            name=m.name,
            kind=m.kind,
            depends_on=tuple(m.depends_on),
            level=level_of.get(m.name, 0),
            estimated_ms=durations.get(m.name),
            slack_ms=slack.get(m.name),
            backend=m.backend,
        )
        for m in info.modules
    ]
    planned = list(plan.get("critical_path", []))
    payload: dict[str, Any] = {
        "program": info.program,
        "version": info.version,
        "levels": levels,
        "width": plan.get("width"),
        "estimated_makespan_ms": plan.get("estimated_makespan"),
        "critical_path": planned,
        "dag_svg": dag_svg(modules, levels, planned),
        "last_run": None,
        "run_critical_path": [],
        "gantt_svg": None,
    }
    run = info.last_run
    if run is not None:
        steps = _steps(run)
        deps = {m.name: m.depends_on for m in modules}
        run_path = critical_path_from_steps(steps, deps)
        started = run.started_at or run.created_at
        payload["last_run"] = {
            "execution_id": run.execution_id,
            "status": run.status,
            "duration_ms": run.duration_ms,
            "started_at": started.isoformat(),
            "error_code": None if run.error is None else run.error.code,
        }
        payload["run_critical_path"] = list(run_path)
        payload["gantt_svg"] = gantt_svg(steps, run_path, width=_GANTT_WIDTH)
    return payload


def _steps(run: ExecutionDetail) -> list[StepView]:
    return [
        StepView(
            module=s.module,
            status=s.status,
            start_ms=s.started_ms or 0.0,
            end_ms=s.ended_ms if s.ended_ms is not None else (s.started_ms or 0.0),
            attempts=s.attempts,
            error_code=s.error_code,
        )
        for s in run.steps
    ]

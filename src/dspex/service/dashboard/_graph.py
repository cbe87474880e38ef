"""The dashboard's view of a program graph: the server-rendered DAG and Gantt SVGs.

The drawings are the ones ``dspex graph --html`` writes (:mod:`dspex.reports.html`), so the page
and the offline report always agree, and so is the conversion of the runtime's ``GraphInfo``
into the reports' plain views (:func:`dspex.reports.graph_report_from_info`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dspex.reports import critical_path_from_steps, dag_svg, gantt_svg, graph_report_from_info

if TYPE_CHECKING:
    from dspex import GraphInfo

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
    report = graph_report_from_info(info)
    levels = [list(names) for names in report.levels]
    planned = list(report.critical_path)
    payload: dict[str, Any] = {
        "program": report.program,
        "version": report.version,
        "levels": levels,
        "width": info.plan.get("width"),
        "estimated_makespan_ms": report.estimated_makespan_ms,
        "critical_path": planned,
        "dag_svg": dag_svg(report.modules, levels, planned),
        "last_run": None,
        "run_critical_path": [],
        "gantt_svg": None,
    }
    run = info.last_run
    if run is not None and report.run is not None:
        steps = report.run.steps
        deps = {m.name: m.depends_on for m in report.modules}
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

"""Report views from a program's graph info: the one conversion the CLI and the dashboard share.

``dspex graph --html`` and the service dashboard draw the same pictures from the runtime's
``GraphInfo``. This module turns that info (as a model with ``model_dump()``, or the dict it
dumps to) into the frozen views of :mod:`dspex.reports.html`; a run's steps stay the runtime's
own :class:`~dspex.actions.models.StepInfo`.

Example:
    >>> info = await runtime.graph("qa")  # doctest: +SKIP
    >>> html = render_graph_html(graph_report_from_info(info))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from dspex.actions.models import StepInfo
from dspex.reports.html import GraphReport, ModuleView, RunView

__all__ = ["SupportsModelDump", "graph_report_from_info", "run_view"]

_STARTED_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


@runtime_checkable
class SupportsModelDump(Protocol):
    """Anything that dumps itself to a dict, as a pydantic model does (``GraphInfo``)."""

    def model_dump(self) -> dict[str, Any]: ...


def _as_mapping(info: Mapping[str, Any] | SupportsModelDump) -> Mapping[str, Any]:
    if isinstance(info, Mapping):
        return info
    return info.model_dump()


def graph_report_from_info(info: Mapping[str, Any] | SupportsModelDump) -> GraphReport:
    """The report's view of a program's graph info.

    Args:
        info: a ``GraphInfo`` (``Runtime.graph``) or its ``model_dump()``: ``program``,
            ``version``, ``plan`` (``levels``, ``critical_path``, ``width``,
            ``estimated_makespan``, ``durations_ms``, ``slack``), ``modules`` (``name``,
            ``kind``, ``depends_on``, ``backend``) and ``last_run`` (an execution detail or
            ``None``).

    Returns:
        The :class:`GraphReport` that :func:`~dspex.reports.html.render_graph_html`,
        :func:`~dspex.reports.html.dag_svg` and :func:`~dspex.reports.html.gantt_svg` draw.
    """
    data = _as_mapping(info)
    plan: Mapping[str, Any] = data.get("plan") or {}
    levels = tuple(tuple(names) for names in plan.get("levels", []))
    level_of = {name: index for index, names in enumerate(levels) for name in names}
    durations: Mapping[str, Any] = plan.get("durations_ms") or {}
    slack: Mapping[str, Any] = plan.get("slack") or {}
    sources: Mapping[str, Any] = plan.get("duration_sources") or {}
    modules = tuple(
        ModuleView(
            name=m["name"],
            kind=m["kind"],
            depends_on=tuple(m.get("depends_on") or ()),
            level=level_of.get(m["name"], 0),
            estimated_ms=durations.get(m["name"]),
            slack_ms=slack.get(m["name"]),
            backend=m.get("backend"),
            estimate_source=sources.get(m["name"]),
        )
        for m in data.get("modules") or ()
    )
    last_run = data.get("last_run")
    return GraphReport(
        program=data["program"],
        version=data.get("version"),
        modules=modules,
        levels=levels,
        critical_path=tuple(plan.get("critical_path", [])),
        width=int(plan.get("width", 0)),
        estimated_makespan_ms=plan.get("estimated_makespan"),
        run=None if last_run is None else run_view(last_run),
        batch=data.get("batch"),
    )


def run_view(run: Mapping[str, Any]) -> RunView:
    """The Gantt view of one recorded execution (an execution detail's dict form).

    The start shown is when it started running, else when it was created.
    """
    started = run.get("started_at") or run.get("created_at")
    return RunView(
        execution_id=run["execution_id"],
        status=str(run["status"]),
        started_at=_format_started(started),
        duration_ms=run.get("duration_ms") or 0.0,
        steps=tuple(StepInfo.model_validate(step) for step in run.get("steps") or ()),
    )


def _format_started(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        # a JSON dump carries ISO text
        value = datetime.fromisoformat(value)
    return value.strftime(_STARTED_FORMAT)

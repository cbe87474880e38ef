"""Reports: pure renderers that turn plain views of a program's graph and runs into documents.

Nothing here does I/O: callers convert engine and store objects into the small frozen views of
:mod:`dspex.reports.html` and write the returned string wherever they like.
"""

from __future__ import annotations

from dspex.reports.html import (
    GraphReport,
    ModuleView,
    RunView,
    StepView,
    critical_path_from_steps,
    dag_svg,
    gantt_svg,
    render_graph_html,
)

__all__ = [
    "GraphReport",
    "ModuleView",
    "RunView",
    "StepView",
    "critical_path_from_steps",
    "dag_svg",
    "gantt_svg",
    "render_graph_html",
]

"""Reports: pure renderers that turn plain views of a program's graph and runs into documents.

Nothing here does I/O: :mod:`dspex.reports.views` converts a program's graph info (plain data)
into the small frozen views of :mod:`dspex.reports.html` (a run's steps are the runtime's own
``StepInfo``), and callers write the returned string wherever they like.
"""

from __future__ import annotations

from dspex.reports.html import (
    GraphReport,
    ModuleView,
    RunView,
    critical_path_from_steps,
    dag_svg,
    gantt_svg,
    render_graph_html,
)
from dspex.reports.views import graph_report_from_info, run_view

__all__ = [
    "GraphReport",
    "ModuleView",
    "RunView",
    "critical_path_from_steps",
    "dag_svg",
    "gantt_svg",
    "graph_report_from_info",
    "render_graph_html",
    "run_view",
]

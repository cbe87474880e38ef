"""The self-contained HTML graph report behind ``dspex graph PROGRAM --html FILE``.

The page shows a program's plan (levels, width, critical path, estimated makespan), a layered
drawing of its dependency graph and a Gantt chart of its last recorded run, followed by a table
of modules. It is one file with inline CSS and inline SVG: no scripts, fonts, images or links to
anything outside, so it can be mailed, archived or opened offline.

Everything here is pure: the caller converts the engine's ``Plan`` into the frozen views below,
gives the recorded steps as the runtime returns them (:class:`~dspex.actions.models.StepInfo`,
times in ms from the start of the run) and writes the returned string. :func:`gantt_svg` and
:func:`dag_svg` return standalone SVG documents (each carries its own ``<style>``) so other
surfaces, such as the HTTP dashboard, can embed them directly.

This module lays the drawings out (positions, labels, tooltips); the markup is written by the
Jinja2 templates in ``dspex/reports/templates``, with autoescaping on, so every name, status and
error code reaches the page escaped.

Example:
    >>> def ran(name, start, end):
    ...     return StepInfo(module=name, status="completed", started_ms=start, ended_ms=end,
    ...                     duration_ms=end - start, attempts=1)
    >>> critical_path_from_steps([ran("a", 0.0, 120.0), ran("b", 120.0, 300.0)], {"b": ["a"]})
    ('a', 'b')
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from dspex._critical_path import critical_path
from dspex.actions.models import StepInfo

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "GraphReport",
    "ModuleView",
    "RunView",
    "critical_path_from_steps",
    "dag_svg",
    "gantt_svg",
    "render_graph_html",
]

_SVG_NS = "http://www.w3.org/2000/svg"
_KNOWN_STATUSES = frozenset({"completed", "failed", "skipped", "cancelled"})
# status -> (fill colour, human label); picked for contrast on white and for colour-blind safety
# (the failed red and completed green differ in lightness as well as hue).
_STATUS_COLOURS: Mapping[str, str] = {
    "completed": "#2f9e63",
    "failed": "#d9483b",
    "cancelled": "#e8a317",
    "skipped": "#9aa1ab",
    "other": "#5b7bd5",
}
_CRITICAL = "#7048e8"
_PAGE_CHART_WIDTH = 1140  # fills the page column (1240 px less paddings)
_PATH_SHOWN = 24  # longer critical paths are shortened in the summary (full path in a tooltip)


@dataclass(frozen=True, slots=True)
class ModuleView:
    """One module as the report shows it.

    Attributes:
        name: the module name.
        kind: the module kind (``predict``, ``retrieve``, ...).
        depends_on: names of the modules it depends on.
        level: its level in the plan (0 = no dependencies).
        estimated_ms: the duration the plan used, if known.
        slack_ms: how long it may be delayed without delaying the run, if known.
        backend: the backend it is bound to, if any.
        estimate_source: where ``estimated_ms`` came from: ``recorded`` (median of recorded
            runs), ``spec`` (the program's ``estimated_ms``) or ``default`` (the kind's default).
    """

    name: str
    kind: str
    depends_on: tuple[str, ...]
    level: int
    estimated_ms: float | None = None
    slack_ms: float | None = None
    backend: str | None = None
    estimate_source: str | None = None


@dataclass(frozen=True, slots=True)
class RunView:
    """The last recorded run of the program.

    Attributes:
        execution_id: the execution id.
        status: the execution status.
        started_at: when it started, already formatted for display.
        duration_ms: its wall-clock duration.
        steps: its steps, as the runtime returns them.
        critical_path: the critical path of this run from its actual timings (see
            :func:`critical_path_from_steps`); when empty the report derives it from ``steps``.
    """

    execution_id: str
    status: str
    started_at: str
    duration_ms: float
    steps: tuple[StepInfo, ...]
    critical_path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GraphReport:
    """Everything :func:`render_graph_html` draws.

    Attributes:
        program: the program name.
        version: the program version, if known.
        modules: the modules, in the order the table lists them.
        levels: module names grouped by level, level 0 first.
        critical_path: the planned critical path, first to last.
        width: the most modules in one level.
        estimated_makespan_ms: the planned length of the critical path.
        run: the last recorded run, or ``None`` when the program never ran.
        batch: a batch's profile (``BatchProfile`` as a dict: per-module durations over its
            items, its slowest items), when the report covers one.
    """

    program: str
    version: int | None
    modules: tuple[ModuleView, ...]
    levels: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    width: int
    estimated_makespan_ms: float | None
    run: RunView | None
    batch: Mapping[str, Any] | None = None


# ---------------------------------------------------------------------------------------------
# critical path of a recorded run


def critical_path_from_steps(
    steps: Sequence[StepInfo], deps: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The chain of modules that actually determined a run's length.

    The rule is :func:`dspex._critical_path.critical_path`, the one ``Runtime.history`` applies to
    the same recorded run: start from the step that ended last and walk back, at each module, to
    the dependency that ended last (the one the module was really waiting for). Skipped steps
    take part with their zero duration, so a chain can run through the failure that caused them;
    on equal end times the longer step wins. A module recorded twice counts with its latest end.

    Args:
        steps: the run's steps.
        deps: each module's dependencies by name (modules missing here have none).

    Returns:
        Module names, first to last; empty when there are no steps.

    Example:
        >>> def ran(name, start, end):
        ...     return StepInfo(module=name, status="completed", started_ms=start,
        ...                     ended_ms=end, duration_ms=end - start, attempts=1)
        >>> steps = [ran("a", 0, 10), ran("b", 10, 50), ran("c", 10, 20), ran("d", 50, 60)]
        >>> critical_path_from_steps(steps, {"b": ["a"], "c": ["a"], "d": ["b", "c"]})
        ('a', 'b', 'd')
    """
    return critical_path(((s.module, *_span(s)) for s in steps), deps)


def _span(step: StepInfo) -> tuple[float, float]:
    """When a step started and ended, in ms; one that never started or has not ended is drawn
    as an instant where it began (at 0 when it never started)."""
    start = step.started_ms or 0.0
    end = step.ended_ms
    return start, start if end is None else end


# ---------------------------------------------------------------------------------------------
# templates and small formatting helpers


@cache
def _templates() -> jinja2.Environment:
    """The report templates (``dspex/reports/templates``), autoescaped and strict."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("dspex.reports", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(n=_n, ms=_ms, status_class=_status_class, path_text=_path_text)
    env.globals.update(svg_ns=_SVG_NS, colours=_STATUS_COLOURS, critical_colour=_CRITICAL)
    return env


def _render(template: str, **context: object) -> str:
    return _templates().get_template(template).render(**context)


def _n(value: float) -> str:
    """A compact SVG coordinate (one decimal, no trailing zeros)."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f} ms"
    return f"{value:,.1f} ms"


def _status_class(status: str) -> str:
    return str(status) if status in _KNOWN_STATUSES else "other"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _nice_step(span: float, target: int = 8) -> float:
    """A 1/2/5 × 10ⁿ tick step giving about ``target`` ticks over ``span``."""
    raw = span / target
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10.0 * magnitude


def _path_text(path: Sequence[str]) -> str:
    if len(path) <= _PATH_SHOWN:
        return " → ".join(path)
    half = _PATH_SHOWN // 2
    hidden = len(path) - 2 * half
    return " → ".join([*path[:half], f"… {hidden} more …", *path[-half:]])


# ---------------------------------------------------------------------------------------------
# Gantt chart


@dataclass(frozen=True, slots=True)
class _Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class _GanttRow:
    """One row of the Gantt chart, laid out: what ``gantt.svg.j2`` draws."""

    module: str
    status: str
    critical: bool
    y: float
    background: str
    label: str
    tip: str
    skipped: bool
    x: float
    width: float
    text: str
    text_x: float


def gantt_svg(steps: Sequence[StepInfo], critical: Collection[str], *, width: int = 960) -> str:
    """A Gantt chart of a run's steps as a standalone SVG document.

    One row per step, ordered by start time; bars are coloured by status and outlined when the
    module is on ``critical``. Skipped steps have no duration and are drawn as a diamond marker.
    The time axis (ms from the first step's start) is drawn above the rows and, for long charts,
    below them too. Every row has a native tooltip with module, status, duration, attempts and
    error code.

    Args:
        steps: the steps to draw.
        critical: names of the modules on the critical path.
        width: the SVG width in px; the height grows with the number of rows.

    Returns:
        The ``<svg>`` element as a string.
    """
    critical = frozenset(critical)
    if not steps:
        return _render("gantt.svg.j2", width=width, height=40.0, rows=[])
    rows = sorted(((*_span(s), s) for s in steps), key=lambda r: (r[0], r[1], r[2].module))
    # about 7.5 px per character of a bold 12 px label, plus the gap before the plot
    label_w = min(260.0, max(90.0, 7.5 * max(len(s.module) for _, _, s in rows) + 24))
    right_pad = 90.0  # room for the duration text after bars that end at the far right
    plot_x = label_w
    plot_w = max(width - label_w - right_pad, 80.0)
    row_h = 22.0
    axis_h = 26.0
    t0 = min(start for start, _, _ in rows)
    t1 = max(max(end, start) for start, end, _ in rows)
    span = max(t1 - t0, 1e-9)
    step = _nice_step(span)
    # the axis ends on a tick; a run of identical instants still gets one tick interval
    span = max(math.ceil(span / step - 1e-9), 1) * step

    def x_of(t: float) -> float:
        return plot_x + (t - t0) / span * plot_w

    bottom_axis = len(rows) > 25
    top = axis_h
    rows_bottom = top + row_h * len(rows)
    height = rows_bottom + (axis_h if bottom_axis else 8.0)

    decimals = 0 if step >= 1 else min(6, -math.floor(math.log10(step)))
    ticks: list[_Tick] = []
    k = 0
    while k * step <= span + step * 1e-6:
        ticks.append(_Tick(x_of(t0 + k * step), f"{k * step:,.{decimals}f}"))
        k += 1

    laid_out: list[_GanttRow] = []
    for i, (start, end, s) in enumerate(rows):
        on_path = s.module in critical
        duration = max(end - start, 0.0)
        tip = [s.module, f"status: {s.status}"]
        if s.status != "skipped":
            tip.append(f"duration: {_ms(duration)}")
        tip.append(f"start: {_ms(start - t0)}")
        tip.append(f"attempts: {s.attempts}")
        if s.error_code:
            tip.append(f"error: {s.error_code}")
        if on_path:
            tip.append("on the critical path")
        x = x_of(start)
        skipped = s.status == "skipped"
        if skipped:
            bar_w, text, text_x = 0.0, "skipped", x + 10
        else:
            bar_w = max(x_of(end) - x, 2.0)  # instant steps stay visible
            text = _ms(duration)
            if s.attempts > 1:
                text += f" · {s.attempts} attempts"
            if s.error_code:
                text += f" · {s.error_code}"
            text_x = x + bar_w + 5
        laid_out.append(
            _GanttRow(
                module=s.module,
                status=_status_class(s.status),
                critical=on_path,
                y=top + i * row_h,
                background="#fafbfc" if i % 2 else "#ffffff",
                label=_clip(s.module, int((label_w - 24) / 7.5)),
                tip="\n".join(tip),
                skipped=skipped,
                x=x,
                width=bar_w,
                text=text,
                text_x=text_x,
            )
        )
    return _render(
        "gantt.svg.j2",
        width=width,
        height=height,
        rows=laid_out,
        ticks=ticks,
        top=top,
        rows_bottom=rows_bottom,
        bottom_axis=bottom_axis,
        plot_x=plot_x,
        row_h=row_h,
    )


# ---------------------------------------------------------------------------------------------
# DAG drawing


@dataclass(frozen=True, slots=True)
class _DagNode:
    name: str
    critical: bool
    x: float
    y: float
    tip: str
    label: str
    sub: str


@dataclass(frozen=True, slots=True)
class _DagEdge:
    source: str
    target: str
    d: str


def dag_svg(
    modules: Sequence[ModuleView], levels: Sequence[Sequence[str]], critical: Collection[str]
) -> str:
    """A layered drawing of the dependency graph as a standalone SVG document.

    Levels are columns from left to right, each column's nodes stacked and centred vertically;
    each dependency is a curve from the dependency's right edge to the dependent's left edge.
    Nodes on ``critical`` and the edges between consecutive critical modules are highlighted.
    Modules that ``levels`` omits are placed by their own ``level``; dependencies on unknown
    modules are not drawn.

    Args:
        modules: the modules.
        levels: module names grouped by level, level 0 first.
        critical: the critical path, first to last (consecutive pairs are critical edges).

    Returns:
        The ``<svg>`` element as a string.
    """
    by_name = {m.name: m for m in modules}
    columns: list[list[str]] = [[n for n in level if n in by_name] for level in levels]
    placed = {n for column in columns for n in column}
    for m in modules:
        if m.name not in placed:
            while len(columns) <= m.level:
                columns.append([])
            columns[max(m.level, 0)].append(m.name)
            placed.add(m.name)
    if not modules:
        return _render("dag.svg.j2", width=240.0, height=40.0, nodes=[])
    node_w, node_h, col_gap, row_gap, pad, head = 168.0, 38.0, 64.0, 12.0, 16.0, 26.0
    tallest = max(len(c) for c in columns)
    width = pad * 2 + len(columns) * node_w + (len(columns) - 1) * col_gap
    height = pad + head + tallest * (node_h + row_gap) - row_gap + pad

    pos: dict[str, tuple[float, float]] = {}
    for ci, column in enumerate(columns):
        x = pad + ci * (node_w + col_gap)
        offset = (tallest - len(column)) * (node_h + row_gap) / 2
        for ri, name in enumerate(column):
            pos[name] = (x, pad + head + offset + ri * (node_h + row_gap))

    path = list(critical)
    critical_nodes = frozenset(path)
    critical_edges = frozenset(itertools.pairwise(path))
    edges: dict[bool, list[_DagEdge]] = {False: [], True: []}
    for m in modules:
        for dep in m.depends_on:
            if dep not in pos:
                continue
            x1, y1 = pos[dep]
            x2, y2 = pos[m.name]
            x1 += node_w
            y1 += node_h / 2
            y2 += node_h / 2
            x2 -= 2  # leave the arrow head visible against the node border
            mid = (x1 + x2) / 2 if x2 > x1 else x1 + col_gap / 2
            d = f"M{_n(x1)} {_n(y1)}C{_n(mid)} {_n(y1)} {_n(mid)} {_n(y2)} {_n(x2)} {_n(y2)}"
            edges[(dep, m.name) in critical_edges].append(_DagEdge(dep, m.name, d))

    nodes: list[_DagNode] = []
    for m in modules:
        x, y = pos[m.name]
        tip = [m.name, f"kind: {m.kind}", f"level: {m.level}"]
        if m.depends_on:
            tip.append("depends on: " + ", ".join(m.depends_on))
        if m.estimated_ms is not None:
            source = f" ({m.estimate_source})" if m.estimate_source else ""
            tip.append(f"estimated: {_ms(m.estimated_ms)}{source}")
        if m.slack_ms is not None:
            tip.append(f"slack: {_ms(m.slack_ms)}")
        if m.backend:
            tip.append(f"backend: {m.backend}")
        sub = m.kind if m.estimated_ms is None else f"{m.kind} · {_ms(m.estimated_ms)}"
        nodes.append(
            _DagNode(
                name=m.name,
                critical=m.name in critical_nodes,
                x=x,
                y=y,
                tip="\n".join(tip),
                label=_clip(m.name, 22),
                sub=_clip(sub, 28),
            )
        )
    return _render(
        "dag.svg.j2",
        width=width,
        height=height,
        nodes=nodes,
        # plain edges first so the highlighted ones are drawn on top of them
        plain_edges=edges[False],
        critical_edges=edges[True],
        level_xs=[pad + ci * (node_w + col_gap) + node_w / 2 for ci in range(len(columns))],
        level_y=pad + 10,
        node_w=node_w,
        node_h=node_h,
    )


# ---------------------------------------------------------------------------------------------
# the page


@dataclass(frozen=True, slots=True)
class _TableRow:
    """One row of the module table."""

    module: ModuleView
    critical: bool
    deps: str
    actual: str
    status: str | None
    error_code: str | None
    not_run: bool


def render_graph_html(report: GraphReport) -> str:
    """The whole report as one self-contained HTML page.

    Args:
        report: what to draw.

    Returns:
        The HTML document as a string (UTF-8 when written out).
    """
    run = report.run
    deps = {m.name: m.depends_on for m in report.modules}
    run_path: tuple[str, ...] = ()
    if run is not None:
        run_path = run.critical_path or critical_path_from_steps(run.steps, deps)

    stats = [
        ("modules", str(len(report.modules))),
        ("levels", str(len(report.levels))),
        ("width", str(report.width)),
        ("estimated makespan", _ms(report.estimated_makespan_ms)),
    ]
    if run is not None:
        stats.append(("last run", _ms(run.duration_ms)))
        stats.append(("steps", str(len(run.steps))))

    steps = {s.module: s for s in run.steps} if run is not None else {}
    planned = frozenset(report.critical_path)
    rows: list[_TableRow] = []
    for m in report.modules:
        step = steps.get(m.name)
        if step is None or step.status == "skipped":
            actual = "—"
        else:
            start, end = _span(step)
            actual = _ms(max(end - start, 0))
        rows.append(
            _TableRow(
                module=m,
                critical=m.name in planned,
                deps=", ".join(m.depends_on) or "—",
                actual=actual,
                status=None if step is None else step.status,
                error_code=None if step is None else step.error_code,
                not_run=step is None and run is not None,
            )
        )

    # the drawings come from this module's own autoescaped templates: the page marks them safe
    dag = dag_svg(report.modules, report.levels, report.critical_path)
    gantt = None if run is None else gantt_svg(run.steps, run_path, width=_PAGE_CHART_WIDTH)
    return _render(
        "graph.html.j2",
        report=report,
        run=run,
        run_path=run_path,
        stats=stats,
        rows=rows,
        dag=dag,
        gantt=gantt,
    )

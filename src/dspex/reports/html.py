"""The self-contained HTML graph report behind ``dspex graph PROGRAM --html FILE``.

The page shows a program's plan (levels, width, critical path, estimated makespan), a layered
drawing of its dependency graph and a Gantt chart of its last recorded run, followed by a table
of modules. It is one file with inline CSS and inline SVG: no scripts, fonts, images or links to
anything outside, so it can be mailed, archived or opened offline.

Everything here is pure: the caller converts the engine's ``Plan`` and the store's step records
into the frozen views below and writes the returned string. :func:`gantt_svg` and
:func:`dag_svg` return standalone SVG documents (each carries its own ``<style>``) so other
surfaces, such as the HTTP dashboard, can embed them directly.

Example:
    >>> steps = [StepView("a", "completed", 0.0, 120.0), StepView("b", "completed", 120.0, 300.0)]
    >>> critical_path_from_steps(steps, {"b": ["a"]})
    ('a', 'b')
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from html import escape

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
    """

    name: str
    kind: str
    depends_on: tuple[str, ...]
    level: int
    estimated_ms: float | None = None
    slack_ms: float | None = None
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class StepView:
    """One module run inside an execution.

    Attributes:
        module: the module name.
        status: ``completed``, ``failed``, ``skipped`` or ``cancelled``.
        start_ms: when it started, in ms (any common origin, usually the execution start).
        end_ms: when it ended, on the same clock; equal to ``start_ms`` for skipped steps.
        attempts: how many attempts it took.
        error_code: the stable error code when it failed.
    """

    module: str
    status: str
    start_ms: float
    end_ms: float
    attempts: int = 1
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class RunView:
    """The last recorded run of the program.

    Attributes:
        execution_id: the execution id.
        status: the execution status.
        started_at: when it started, already formatted for display.
        duration_ms: its wall-clock duration.
        steps: its steps.
        critical_path: the critical path of this run from its actual timings (see
            :func:`critical_path_from_steps`); when empty the report derives it from ``steps``.
    """

    execution_id: str
    status: str
    started_at: str
    duration_ms: float
    steps: tuple[StepView, ...]
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
    """

    program: str
    version: int | None
    modules: tuple[ModuleView, ...]
    levels: tuple[tuple[str, ...], ...]
    critical_path: tuple[str, ...]
    width: int
    estimated_makespan_ms: float | None
    run: RunView | None


# ---------------------------------------------------------------------------------------------
# critical path of a recorded run


def critical_path_from_steps(
    steps: Sequence[StepView], deps: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    """The chain of modules that actually determined a run's length.

    Starts from the step that ended last and walks back, at each module, to the dependency that
    ended last (the one the module was really waiting for). Skipped steps take part with their
    zero duration, so a chain can run through the failure that caused them; on equal end times
    the longer step wins. A module recorded twice counts with its latest end.

    Args:
        steps: the run's steps.
        deps: each module's dependencies by name (modules missing here have none).

    Returns:
        Module names, first to last; empty when there are no steps.

    Example:
        >>> steps = [
        ...     StepView("a", "completed", 0, 10),
        ...     StepView("b", "completed", 10, 50),
        ...     StepView("c", "completed", 10, 20),
        ...     StepView("d", "completed", 50, 60),
        ... ]
        >>> critical_path_from_steps(steps, {"b": ["a"], "c": ["a"], "d": ["b", "c"]})
        ('a', 'b', 'd')
    """
    latest: dict[str, StepView] = {}
    for step in steps:
        seen = latest.get(step.module)
        if seen is None or step.end_ms > seen.end_ms:
            latest[step.module] = step
    if not latest:
        return ()
    # ties on the end time go to the longer step: it is the one that was actually being waited on
    current: StepView | None = max(latest.values(), key=lambda s: (s.end_ms, s.end_ms - s.start_ms))
    path: list[str] = []
    visited: set[str] = set()
    while current is not None and current.module not in visited:
        path.append(current.module)
        visited.add(current.module)
        candidates = [latest[d] for d in deps.get(current.module, ()) if d in latest]
        current = (
            max(candidates, key=lambda s: (s.end_ms, s.end_ms - s.start_ms)) if candidates else None
        )
    path.reverse()
    return tuple(path)


# ---------------------------------------------------------------------------------------------
# small formatting helpers


def _e(value: object) -> str:
    return escape(str(value), quote=True)


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
    return status if status in _KNOWN_STATUSES else "other"


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

_GANTT_STYLE = (
    ".dspex-gantt text{font:12px system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    "fill:#1f2933}"
    ".dspex-gantt .axis text{fill:#52606d;font-size:11px}"
    ".dspex-gantt .grid{stroke:#e4e7eb;stroke-width:1}"
    ".dspex-gantt .row:hover .bg{fill:#f0f4ff}"
    ".dspex-gantt .row.critical .label{font-weight:600;fill:" + _CRITICAL + "}"
    ".dspex-gantt .bar.critical{stroke:" + _CRITICAL + ";stroke-width:2.5}"
    ".dspex-gantt .dur{fill:#52606d;font-size:11px}"
    ".dspex-gantt .marker{stroke:#616e7c;stroke-width:1.5}"
)


def gantt_svg(steps: Sequence[StepView], critical: Collection[str], *, width: int = 960) -> str:
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
        return (
            f'<svg xmlns="{_SVG_NS}" class="dspex-gantt" width="{width}" height="40" '
            f'role="img" aria-label="empty Gantt chart"><style>{_GANTT_STYLE}</style>'
            '<text x="8" y="24">no steps recorded</text></svg>'
        )
    rows = sorted(steps, key=lambda s: (s.start_ms, s.end_ms, s.module))
    # about 7.5 px per character of a bold 12 px label, plus the gap before the plot
    label_w = min(260.0, max(90.0, 7.5 * max(len(s.module) for s in rows) + 24))
    right_pad = 90.0  # room for the duration text after bars that end at the far right
    plot_x = label_w
    plot_w = max(width - label_w - right_pad, 80.0)
    row_h = 22.0
    axis_h = 26.0
    t0 = min(s.start_ms for s in rows)
    t1 = max(max(s.end_ms, s.start_ms) for s in rows)
    span = max(t1 - t0, 1e-9)
    step = _nice_step(span)
    # the axis ends on a tick; a run of identical instants still gets one tick interval
    span = max(math.ceil(span / step - 1e-9), 1) * step

    def x_of(t: float) -> float:
        return plot_x + (t - t0) / span * plot_w

    bottom_axis = len(rows) > 25
    top = axis_h
    height = top + row_h * len(rows) + (axis_h if bottom_axis else 8.0)
    out: list[str] = [
        f'<svg xmlns="{_SVG_NS}" class="dspex-gantt" width="{width}" height="{_n(height)}" '
        f'viewBox="0 0 {width} {_n(height)}" role="img" aria-label="Gantt chart of the run">'
        f"<style>{_GANTT_STYLE}</style>"
    ]

    ticks: list[float] = []
    k = 0
    while k * step <= span + step * 1e-6:
        ticks.append(k * step)
        k += 1
    decimals = 0 if step >= 1 else min(6, -math.floor(math.log10(step)))
    out.append('<g class="axis">')
    rows_bottom = top + row_h * len(rows)
    for tick in ticks:
        tx = _n(x_of(t0 + tick))
        label = f"{tick:,.{decimals}f}"
        out.append(
            f'<line class="grid" x1="{tx}" y1="{_n(top - 4)}" x2="{tx}" y2="{_n(rows_bottom)}"/>'
        )
        out.append(f'<text x="{tx}" y="{_n(top - 9)}" text-anchor="middle">{label}</text>')
        if bottom_axis:
            out.append(
                f'<text x="{tx}" y="{_n(rows_bottom + 16)}" text-anchor="middle">{label}</text>'
            )
    out.append(f'<text x="{_n(plot_x - 8)}" y="{_n(top - 9)}" text-anchor="end">ms</text>')
    out.append("</g>")

    for i, s in enumerate(rows):
        y = top + i * row_h
        status = _status_class(s.status)
        on_path = s.module in critical
        crit = " critical" if on_path else ""
        duration = max(s.end_ms - s.start_ms, 0.0)
        tip = [s.module, f"status: {s.status}"]
        if s.status != "skipped":
            tip.append(f"duration: {_ms(duration)}")
        tip.append(f"start: {_ms(s.start_ms - t0)}")
        tip.append(f"attempts: {s.attempts}")
        if s.error_code:
            tip.append(f"error: {s.error_code}")
        if on_path:
            tip.append("on the critical path")
        name = _e(s.module)
        out.append(f'<g class="row {status}{crit}" data-module="{name}"><title>')
        out.append(_e("\n".join(tip)))
        out.append("</title>")
        out.append(
            f'<rect class="bg" x="0" y="{_n(y)}" width="{width}" height="{_n(row_h)}" '
            f'fill="{"#fafbfc" if i % 2 else "#ffffff"}"/>'
        )
        out.append(
            f'<text class="label" x="{_n(plot_x - 8)}" y="{_n(y + 15)}" text-anchor="end">'
            f"{_e(_clip(s.module, int((label_w - 24) / 7.5)))}</text>"
        )
        x = x_of(s.start_ms)
        cy = y + row_h / 2
        if s.status == "skipped":
            out.append(
                f'<path class="marker{crit}" d="M{_n(x)} {_n(cy - 6)}l6 6l-6 6l-6-6z" '
                f'fill="{_STATUS_COLOURS["skipped"]}"/>'
            )
            text = "skipped"
            text_x = x + 10
        else:
            w = max(x_of(s.end_ms) - x, 2.0)  # instant steps stay visible
            out.append(
                f'<rect class="bar {status}{crit}" x="{_n(x)}" y="{_n(y + 4)}" width="{_n(w)}" '
                f'height="{_n(row_h - 8)}" rx="3" fill="{_STATUS_COLOURS[status]}"/>'
            )
            text = _ms(duration)
            if s.attempts > 1:
                text += f" · {s.attempts} attempts"
            if s.error_code:
                text += f" · {s.error_code}"
            text_x = x + w + 5
        out.append(f'<text class="dur" x="{_n(text_x)}" y="{_n(y + 15)}">{_e(text)}</text>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# DAG drawing

_DAG_STYLE = (
    ".dspex-dag text{font:12px system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    "fill:#1f2933}"
    ".dspex-dag .node rect{fill:#ffffff;stroke:#9aa5b1;stroke-width:1.2}"
    ".dspex-dag .node .kind{fill:#616e7c;font-size:10.5px}"
    ".dspex-dag .node:hover rect{fill:#f0f4ff}"
    ".dspex-dag .node.critical rect{fill:#f3f0ff;stroke:" + _CRITICAL + ";stroke-width:2.5}"
    ".dspex-dag .node.critical .name{font-weight:600}"
    ".dspex-dag .edge{fill:none;stroke:#b8c2cc;stroke-width:1.3}"
    ".dspex-dag .edge.critical{stroke:" + _CRITICAL + ";stroke-width:2.5}"
    ".dspex-dag .lvl{fill:#7b8794;font-size:11px;font-weight:600}"
)


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
        return (
            f'<svg xmlns="{_SVG_NS}" class="dspex-dag" width="240" height="40" role="img" '
            f'aria-label="empty graph"><style>{_DAG_STYLE}</style>'
            '<text x="8" y="24">no modules</text></svg>'
        )
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
    out: list[str] = [
        f'<svg xmlns="{_SVG_NS}" class="dspex-dag" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label="dependency graph">'
        f"<style>{_DAG_STYLE}</style>"
        '<defs><marker id="dspex-arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0 0L8 4L0 8z" fill="#b8c2cc"/></marker>'
        '<marker id="dspex-arrow-critical" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="5" '
        f'markerHeight="5" orient="auto"><path d="M0 0L8 4L0 8z" fill="{_CRITICAL}"/></marker>'
        "</defs>"
    ]
    for ci in range(len(columns)):
        x = pad + ci * (node_w + col_gap) + node_w / 2
        out.append(f'<text class="lvl" x="{_n(x)}" y="{_n(pad + 10)}" text-anchor="middle">')
        out.append(f"level {ci}</text>")

    edges: list[tuple[bool, str, str]] = []
    for m in modules:
        for dep in m.depends_on:
            if dep in pos:
                edges.append(((dep, m.name) in critical_edges, dep, m.name))
    # the arrow marker is inherited from the group rather than repeated on every path; plain
    # edges go first so the highlighted ones are drawn on top of them
    edges.sort(key=lambda e: e[0])
    out.append('<g marker-end="url(#dspex-arrow)">')
    group_critical = False
    for is_critical, src, dst in edges:
        if is_critical and not group_critical:
            out.append('</g><g marker-end="url(#dspex-arrow-critical)">')
            group_critical = True
        x1, y1 = pos[src]
        x2, y2 = pos[dst]
        x1 += node_w
        y1 += node_h / 2
        y2 += node_h / 2
        x2 -= 2  # leave the arrow head visible against the node border
        mid = (x1 + x2) / 2 if x2 > x1 else x1 + col_gap / 2
        crit = " critical" if is_critical else ""
        out.append(
            f'<path class="edge{crit}" data-from="{_e(src)}" data-to="{_e(dst)}" '
            f'd="M{_n(x1)} {_n(y1)}C{_n(mid)} {_n(y1)} {_n(mid)} {_n(y2)} {_n(x2)} {_n(y2)}"/>'
        )
    out.append("</g>")

    for m in modules:
        x, y = pos[m.name]
        crit = " critical" if m.name in critical_nodes else ""
        tip = [m.name, f"kind: {m.kind}", f"level: {m.level}"]
        if m.depends_on:
            tip.append("depends on: " + ", ".join(m.depends_on))
        if m.estimated_ms is not None:
            tip.append(f"estimated: {_ms(m.estimated_ms)}")
        if m.slack_ms is not None:
            tip.append(f"slack: {_ms(m.slack_ms)}")
        if m.backend:
            tip.append(f"backend: {m.backend}")
        sub = m.kind if m.estimated_ms is None else f"{m.kind} · {_ms(m.estimated_ms)}"
        out.append(
            f'<g class="node{crit}" data-module="{_e(m.name)}"><title>{_e(chr(10).join(tip))}'
            f'</title><rect x="{_n(x)}" y="{_n(y)}" width="{_n(node_w)}" height="{_n(node_h)}" '
            f'rx="6"/><text class="name" x="{_n(x + 9)}" y="{_n(y + 16)}">'
            f"{_e(_clip(m.name, 22))}</text>"
            f'<text class="kind" x="{_n(x + 9)}" y="{_n(y + 30)}">{_e(_clip(sub, 28))}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# the page

_PAGE_STYLE = """
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:#f5f7fa;color:#1f2933;
font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px}
header h1{margin:0;font-size:24px;font-weight:650;overflow-wrap:anywhere}
header .ver{color:#616e7c;font-weight:400}
header .meta{margin-top:6px;color:#52606d}
header .meta span{margin-right:16px}
section{background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:16px 20px;
margin-top:18px;box-shadow:0 1px 2px rgba(31,41,51,.04)}
h2{font-size:16px;margin:0 0 12px;font-weight:650}
.stats{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px;margin:0}
.stats div{background:#f8f9fb;border-radius:8px;padding:8px 12px}
.stats dt{color:#616e7c;font-size:12px}
.stats dd{margin:0;font-size:18px;font-weight:600}
.path{margin:14px 0 0;overflow-wrap:anywhere}
.path b{color:#616e7c;font-weight:500;margin-right:6px}
.path span{color:#5f3dc4;font-weight:600}
.scroll{overflow:auto;max-height:720px;border:1px solid #eef0f3;border-radius:8px}
.empty{color:#616e7c;font-style:italic;margin:0}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
color:#fff;background:#5b7bd5}
.badge.completed{background:#2f9e63}.badge.failed{background:#c0392b}
.badge.cancelled{background:#b7791f}.badge.skipped{background:#7b8794}
.legend{display:flex;flex-wrap:wrap;gap:18px;margin-top:10px;color:#52606d;font-size:13px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.legend i{display:inline-block;width:14px;height:10px;border-radius:2px}
.legend i.crit{background:#fff;border:2.5px solid #7048e8;height:12px}
.legend i.diamond{width:9px;height:9px;transform:rotate(45deg);border-radius:0}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eef0f3;vertical-align:top}
th{position:sticky;top:0;background:#f8f9fb;color:#52606d;font-weight:600;z-index:1}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.deps{color:#52606d;overflow-wrap:anywhere;max-width:320px}
td.name{overflow-wrap:anywhere;font-weight:500;min-width:160px}
tr.critical td.name{color:#5f3dc4;font-weight:650;box-shadow:inset 3px 0 #7048e8}
footer{color:#7b8794;font-size:12px;margin:18px 0 0;text-align:center}
"""


def _legend() -> str:
    items = [
        f'<span><i style="background:{_STATUS_COLOURS[s]}"></i>{s}</span>'
        for s in ("completed", "failed", "cancelled")
    ]
    items.append(
        f'<span><i class="diamond" style="background:{_STATUS_COLOURS["skipped"]}"></i>'
        "skipped (did not run)</span>"
    )
    items.append('<span><i class="crit"></i>critical path</span>')
    return f'<div class="legend">{"".join(items)}</div>'


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

    parts: list[str] = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(report.program)} · dspex graph</title><style>{_PAGE_STYLE}</style>"
        "</head><body><main>"
    ]

    version = "" if report.version is None else f' <span class="ver">v{report.version}</span>'
    parts.append(f'<header><h1>{_e(report.program)}{version}</h1><div class="meta">')
    if run is None:
        parts.append("<span>no recorded run</span>")
    else:
        parts.append(
            f"<span>last run <code>{_e(run.execution_id)}</code></span>"
            f'<span><span class="badge {_status_class(run.status)}">{_e(run.status)}</span></span>'
            f"<span>started {_e(run.started_at)}</span>"
            f"<span>took {_e(_ms(run.duration_ms))}</span>"
        )
    parts.append("</div></header>")

    stats = [
        ("modules", str(len(report.modules))),
        ("levels", str(len(report.levels))),
        ("width", str(report.width)),
        ("estimated makespan", _ms(report.estimated_makespan_ms)),
    ]
    if run is not None:
        stats.append(("last run", _ms(run.duration_ms)))
        stats.append(("steps", str(len(run.steps))))
    parts.append('<section><h2>Summary</h2><dl class="stats">')
    for term, value in stats:
        parts.append(f"<div><dt>{_e(term)}</dt><dd>{_e(value)}</dd></div>")
    parts.append("</dl>")
    parts.append(_path_line("planned critical path", report.critical_path))
    if run is not None:
        parts.append(_path_line("critical path of the last run", run_path))
    parts.append("</section>")

    parts.append(
        "<section><h2>Dependency graph</h2>"
        '<p class="empty" style="font-style:normal;margin-bottom:8px">Levels run left to right; '
        "the planned critical path is highlighted.</p>"
        f'<div class="scroll">{dag_svg(report.modules, report.levels, report.critical_path)}'
        "</div></section>"
    )

    parts.append("<section><h2>Last run</h2>")
    if run is None:
        parts.append(
            '<p class="empty">No recorded run yet: run the program to see its timeline.</p>'
        )
    else:
        chart = gantt_svg(run.steps, run_path, width=_PAGE_CHART_WIDTH)
        parts.append(f'<div class="scroll">{chart}</div>{_legend()}')
    parts.append("</section>")

    parts.append(_module_table(report, run, frozenset(report.critical_path)))
    parts.append("<footer>generated by dspex · self-contained, no external resources</footer>")
    parts.append("</main></body></html>")
    return "".join(parts)


def _path_line(title: str, path: Sequence[str]) -> str:
    if not path:
        return f'<p class="path"><b>{_e(title)}:</b>—</p>'
    full = " → ".join(path)
    return (
        f'<p class="path" title="{_e(full)}"><b>{_e(title)}:</b>'
        f"<span>{_e(_path_text(path))}</span></p>"
    )


def _module_table(report: GraphReport, run: RunView | None, critical: frozenset[str]) -> str:
    steps: dict[str, StepView] = {}
    if run is not None:
        for s in run.steps:
            steps[s.module] = s
    head = (
        '<section><h2>Modules</h2><div class="scroll"><table><thead><tr>'
        '<th>name</th><th>kind</th><th class="num">level</th><th>depends on</th>'
        '<th class="num">estimated</th><th class="num">slack</th>'
        '<th class="num">actual</th><th>status</th></tr></thead><tbody>'
    )
    rows: list[str] = [head]
    for m in report.modules:
        step = steps.get(m.name)
        if step is None:
            actual, status = "—", ('<span class="empty">not run</span>' if run else "—")
        else:
            actual = "—" if step.status == "skipped" else _ms(max(step.end_ms - step.start_ms, 0))
            status = f'<span class="badge {_status_class(step.status)}">{_e(step.status)}</span>'
            if step.error_code:
                status += f" <code>{_e(step.error_code)}</code>"
        crit = ' class="critical"' if m.name in critical else ""
        rows.append(
            f'<tr{crit} data-module="{_e(m.name)}"><td class="name">{_e(m.name)}</td>'
            f'<td>{_e(m.kind)}</td><td class="num">{m.level}</td>'
            f'<td class="deps">{_e(", ".join(m.depends_on)) or "—"}</td>'
            f'<td class="num">{_ms(m.estimated_ms)}</td><td class="num">{_ms(m.slack_ms)}</td>'
            f'<td class="num">{actual}</td><td>{status}</td></tr>'
        )
    rows.append("</tbody></table></div></section>")
    return "".join(rows)

"""The self-contained HTML graph report: structure, safety, highlighting, run critical path."""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from importlib import resources

import pytest

from dspex.actions.models import StepInfo
from dspex.reports import (
    GraphReport,
    ModuleView,
    RunView,
    critical_path_from_steps,
    dag_svg,
    gantt_svg,
    render_graph_html,
)
from dspex.reports import html as html_report

VOID = frozenset(
    {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track"}
    | {"wbr"}
)


def ran(
    module: str,
    status: str,
    start: float,
    end: float,
    *,
    attempts: int = 1,
    error_code: str | None = None,
) -> StepInfo:
    """A recorded step as the runtime returns it, from ``start`` to ``end`` ms."""
    return StepInfo.model_validate(
        {
            "module": module,
            "status": status,
            "started_ms": start,
            "ended_ms": end,
            "duration_ms": end - start,
            "attempts": attempts,
            "error_code": error_code,
        }
    )


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Checker(HTMLParser):
    """Collects elements and text and fails on any tag that is not closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[Element] = []
        self.elements: list[Element] = []
        self.errors: list[str] = []
        self.data: list[str] = []

    def _open(self, tag: str, attrs: list[tuple[str, str | None]]) -> Element:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        return element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = self._open(tag, attrs)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._open(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1].tag != tag:
            open_tag = self.stack[-1].tag if self.stack else None
            self.errors.append(f"</{tag}> closes <{open_tag}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.data.append(data)
        for element in self.stack:
            element.text.append(data)


def parse(document: str) -> Checker:
    checker = Checker()
    checker.feed(document)
    checker.close()
    assert checker.errors == []
    assert [e.tag for e in checker.stack] == []
    return checker


def with_module(checker: Checker, tag: str, name: str) -> list[Element]:
    return [e for e in checker.elements if e.tag == tag and e.attrs.get("data-module") == name]


def diamond_report(*, run: bool = True) -> GraphReport:
    modules = (
        ModuleView("a", "retrieve", (), 0, 50.0, 0.0),
        ModuleView("b", "predict", ("a",), 1, 500.0, 0.0, "openai"),
        ModuleView("c", "python", ("a",), 1, 10.0, 490.0, estimate_source="spec"),
        ModuleView("d", "chain_of_thought", ("b", "c"), 2, 1000.0, 0.0),
    )
    steps = (
        ran("a", "completed", 0.0, 40.0),
        ran("b", "completed", 40.0, 90.0),
        ran("c", "failed", 40.0, 700.0, attempts=3, error_code="backend.timeout"),
        ran("d", "skipped", 700.0, 700.0),
    )
    last = RunView("exec-1", "failed", "2025-01-01 00:00:00 UTC", 700.0, steps, ("a", "c", "d"))
    return GraphReport(
        program="diamond",
        version=2,
        modules=modules,
        levels=(("a",), ("b", "c"), ("d",)),
        critical_path=("a", "b", "d"),
        width=2,
        estimated_makespan_ms=1550.0,
        run=last if run else None,
    )


def chain_report(n: int, *, fan: int = 1) -> GraphReport:
    """``n`` modules in levels of ``fan``; each depends on every module of the previous level."""
    names = [f"module_{i:04d}" for i in range(n)]
    levels = tuple(tuple(names[i : i + fan]) for i in range(0, n, fan))
    modules = tuple(
        ModuleView(
            name,
            "predict",
            levels[lv - 1] if lv else (),
            lv,
            100.0,
            0.0,
        )
        for lv, level in enumerate(levels)
        for name in level
    )
    steps = tuple(
        ran(name, "completed", lv * 100.0, lv * 100.0 + 90.0 + k)
        for lv, level in enumerate(levels)
        for k, name in enumerate(level)
    )
    path = tuple(level[-1] for level in levels)
    run = RunView("exec-big", "completed", "now", n * 100.0, steps, path)
    return GraphReport("big", 1, modules, levels, path, fan, n * 100.0, run)


# --- critical_path_from_steps ------------------------------------------------------------------


def test_critical_path_of_a_diamond_goes_through_the_branch_that_ended_last() -> None:
    steps = [
        ran("a", "completed", 0, 10),
        ran("b", "completed", 10, 30),
        ran("c", "completed", 10, 80),
        ran("d", "completed", 80, 90),
    ]
    deps = {"b": ["a"], "c": ["a"], "d": ["b", "c"]}
    assert critical_path_from_steps(steps, deps) == ("a", "c", "d")


def test_critical_path_of_a_chain_is_the_whole_chain() -> None:
    steps = [ran(n, "completed", i * 10, i * 10 + 10) for i, n in enumerate("pqrs")]
    deps = {"q": ["p"], "r": ["q"], "s": ["r"]}
    assert critical_path_from_steps(steps, deps) == ("p", "q", "r", "s")


def test_critical_path_of_parallel_branches_is_the_branch_that_ended_last() -> None:
    steps = [
        ran("x1", "completed", 0, 50),
        ran("x2", "completed", 50, 60),
        ran("y1", "completed", 0, 20),
        ran("y2", "completed", 20, 95),
    ]
    deps = {"x2": ["x1"], "y2": ["y1"]}
    assert critical_path_from_steps(steps, deps) == ("y1", "y2")


def test_critical_path_prefers_the_longer_step_when_end_times_tie() -> None:
    steps = [ran("short", "completed", 90, 100), ran("long", "completed", 0, 100)]
    assert critical_path_from_steps(steps, {}) == ("long",)


def test_critical_path_runs_through_a_skipped_step_that_ended_last() -> None:
    steps = [
        ran("a", "failed", 0, 70),
        ran("b", "completed", 0, 20),
        ran("c", "skipped", 70, 70),
        ran("d", "completed", 70, 75),
    ]
    deps = {"c": ["a"], "d": ["b", "c"]}
    assert critical_path_from_steps(steps, deps) == ("a", "c", "d")


def test_critical_path_uses_the_latest_record_of_a_module() -> None:
    steps = [
        ran("a", "completed", 0, 10),
        ran("b", "completed", 0, 30),
        ran("a", "completed", 40, 50),
        ran("c", "completed", 50, 60),
    ]
    assert critical_path_from_steps(steps, {"c": ["a", "b"]}) == ("a", "c")


def test_critical_path_ignores_dependencies_without_steps() -> None:
    steps = [ran("b", "completed", 0, 10)]
    assert critical_path_from_steps(steps, {"b": ["never_ran"]}) == ("b",)


def test_critical_path_of_no_steps_is_empty() -> None:
    assert critical_path_from_steps([], {"a": []}) == ()


def test_critical_path_stops_on_a_dependency_cycle() -> None:
    steps = [ran("a", "completed", 0, 10), ran("b", "completed", 5, 20)]
    assert critical_path_from_steps(steps, {"a": ["b"], "b": ["a"]}) == ("a", "b")


# --- the page ----------------------------------------------------------------------------------


def test_page_is_well_formed_html() -> None:
    checker = parse(render_graph_html(diamond_report()))
    assert [e.tag for e in checker.elements[:2]] == ["html", "head"]


def test_page_refers_to_no_external_resource() -> None:
    page = render_graph_html(diamond_report())
    without_ns = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "http://" not in without_ns
    assert "https://" not in without_ns
    assert "<script" not in page
    assert "<link" not in page
    assert "@import" not in page
    assert not re.search(r"url\((?!#)", page)  # only references to markers in the same SVG


def test_page_header_names_program_version_and_run() -> None:
    checker = parse(render_graph_html(diamond_report()))
    header = next(e for e in checker.elements if e.tag == "header")
    text = " ".join("".join(header.text).split())
    assert "diamond v2" in text
    assert "exec-1" in text
    assert "failed" in text
    assert "700 ms" in text


def test_summary_shows_the_critical_paths_as_arrows() -> None:
    page = render_graph_html(diamond_report())
    assert "a → b → d" in page
    assert "a → c → d" in page  # the last run's own path


def test_summary_shows_counts_and_estimated_makespan() -> None:
    checker = parse(render_graph_html(diamond_report()))
    terms = [e for e in checker.elements if e.tag in {"dt", "dd"}]
    texts = ["".join(e.text) for e in terms]
    pairs = dict(zip(texts[::2], texts[1::2], strict=True))
    assert pairs["modules"] == "4"
    assert pairs["levels"] == "3"
    assert pairs["width"] == "2"
    assert pairs["estimated makespan"] == "1,550 ms"


def test_long_critical_paths_are_shortened_in_the_summary() -> None:
    report = chain_report(60)
    page = render_graph_html(report)
    assert "… 36 more …" in page
    assert "module_0000 → module_0001" in page


def test_module_names_are_escaped_everywhere() -> None:
    evil = '<script>alert("x")</script>'
    modules = (ModuleView(evil, "python", (), 0), ModuleView("b&c", "python", (evil,), 1))
    steps = (ran(evil, "completed", 0, 5), ran("b&c", "failed", 5, 9, error_code="<e>"))
    run = RunView("<id>", "<st>", "<t>", 9.0, steps, (evil, "b&c"))
    report = GraphReport(evil, None, modules, ((evil,), ("b&c",)), (evil, "b&c"), 1, 9.0, run)
    page = render_graph_html(report)
    checker = parse(page)
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert not any(e.tag == "script" for e in checker.elements)
    # the names come back intact once the HTML is decoded
    assert with_module(checker, "g", evil)
    assert with_module(checker, "tr", "b&c")
    assert "<e>" in "".join(checker.data)


def test_planned_critical_path_is_highlighted_in_the_graph() -> None:
    checker = parse(render_graph_html(diamond_report()))
    nodes = {e.attrs["data-module"]: e for e in checker.elements if "node" in e.classes}
    assert {n for n, e in nodes.items() if "critical" in e.classes} == {"a", "b", "d"}
    edges = {
        (e.attrs["data-from"], e.attrs["data-to"]): "critical" in e.classes
        for e in checker.elements
        if "edge" in e.classes
    }
    assert edges == {("a", "b"): True, ("a", "c"): False, ("b", "d"): True, ("c", "d"): False}


def test_run_critical_path_is_highlighted_in_the_gantt_chart() -> None:
    checker = parse(render_graph_html(diamond_report()))
    rows = {e.attrs["data-module"]: e for e in checker.elements if "row" in e.classes}
    assert {n for n, e in rows.items() if "critical" in e.classes} == {"a", "c", "d"}
    bars = [e for e in checker.elements if "bar" in e.classes and "critical" in e.classes]
    assert len(bars) == 2  # a and c; d was skipped and has a marker instead of a bar


def test_gantt_rows_are_ordered_by_start_and_coloured_by_status() -> None:
    checker = parse(render_graph_html(diamond_report()))
    rows = [e for e in checker.elements if "row" in e.classes]
    assert [r.attrs["data-module"] for r in rows] == ["a", "b", "c", "d"]
    assert [sorted(r.classes - {"row", "critical"}) for r in rows] == [
        ["completed"],
        ["completed"],
        ["failed"],
        ["skipped"],
    ]


def test_skipped_steps_get_a_marker_instead_of_a_bar() -> None:
    svg = gantt_svg([ran("s", "skipped", 10, 10), ran("t", "completed", 0, 20)], ())
    checker = parse(svg)
    markers = [e for e in checker.elements if "marker" in e.classes]
    bars = [e for e in checker.elements if "bar" in e.classes]
    assert len(markers) == 1
    assert len(bars) == 1


def test_gantt_tooltips_carry_duration_attempts_and_error() -> None:
    checker = parse(render_graph_html(diamond_report()))
    titles = ["".join(e.text) for e in checker.elements if e.tag == "title"]
    tip = next(t for t in titles if t.startswith("c\nstatus: failed"))
    assert "duration: 660 ms" in tip
    assert "attempts: 3" in tip
    assert "error: backend.timeout" in tip


def test_gantt_axis_has_ticks_in_ms() -> None:
    checker = parse(gantt_svg([ran("a", "completed", 0, 1000)], ()))
    axis = next(e for e in checker.elements if e.attrs.get("class") == "axis")
    labels = [t for t in axis.text if t.strip()]
    assert labels[:3] == ["0", "200", "400"]
    assert "1,000" in labels
    assert "ms" in labels


def test_gantt_axis_handles_sub_millisecond_runs() -> None:
    checker = parse(gantt_svg([ran("a", "completed", 0, 0.4)], ()))
    axis = next(e for e in checker.elements if e.attrs.get("class") == "axis")
    assert "0.05" in axis.text


def test_gantt_of_instant_steps_still_draws_a_visible_bar() -> None:
    checker = parse(gantt_svg([ran("a", "completed", 5, 5)], ()))
    bar = next(e for e in checker.elements if "bar" in e.classes)
    assert float(bar.attrs["width"]) >= 2


def test_a_step_that_never_ended_or_never_started_is_drawn_as_an_instant() -> None:
    cut_short = StepInfo(
        module="cut",
        status="cancelled",
        started_ms=30.0,
        ended_ms=None,
        duration_ms=None,
        attempts=1,
    )
    never = StepInfo(
        module="never",
        status="skipped",
        started_ms=None,
        ended_ms=None,
        duration_ms=None,
        attempts=0,
    )
    steps = [cut_short, never, ran("t", "completed", 10, 50)]
    checker = parse(gantt_svg(steps, ()))
    titles = ["".join(e.text) for e in checker.elements if e.tag == "title"]
    assert "duration: 0.0 ms\nstart: 30.0 ms" in next(t for t in titles if t.startswith("cut"))
    assert "start: 0.0 ms" in next(t for t in titles if t.startswith("never"))
    assert critical_path_from_steps(steps, {}) == ("t",)


def test_gantt_of_no_steps_says_so() -> None:
    assert "no steps recorded" in parse(gantt_svg([], ())).data


def test_gantt_respects_the_requested_width() -> None:
    checker = parse(gantt_svg([ran("a", "completed", 0, 10)], (), width=600))
    svg = checker.elements[0]
    assert svg.attrs["width"] == "600"


def test_page_without_a_run_says_no_recorded_run() -> None:
    page = render_graph_html(diamond_report(run=False))
    checker = parse(page)
    assert "no recorded run" in page
    assert not any("dspex-gantt" in e.classes for e in checker.elements)
    assert any("dspex-dag" in e.classes for e in checker.elements)


def test_run_critical_path_is_derived_from_steps_when_not_given() -> None:
    report = diamond_report()
    assert report.run is not None
    run = RunView("e", "failed", "t", 700.0, report.run.steps, ())
    checker = parse(render_graph_html(GraphReport(**{**_fields(report), "run": run})))
    rows = {e.attrs["data-module"]: e for e in checker.elements if "row" in e.classes}
    # d was skipped at the instant c failed; on equal end times the longer step, c, ends the path
    assert {n for n, e in rows.items() if "critical" in e.classes} == {"a", "c"}


def _fields(report: GraphReport) -> dict[str, object]:
    return {name: getattr(report, name) for name in GraphReport.__dataclass_fields__}


def test_module_table_lists_plan_and_actual_figures() -> None:
    checker = parse(render_graph_html(diamond_report()))
    row = with_module(checker, "tr", "c")[0]
    cells = " | ".join(t for t in row.text if t.strip())
    assert cells == (
        "c | python | 1 | a | 10.0 ms | spec | 490 ms | 660 ms | failed | backend.timeout"
    )
    skipped = with_module(checker, "tr", "d")[0]
    assert "—" in skipped.text  # a skipped module has no actual duration


def test_module_table_marks_modules_the_run_never_reached() -> None:
    report = diamond_report()
    assert report.run is not None
    run = RunView("e", "cancelled", "t", 50.0, report.run.steps[:1], ())
    checker = parse(render_graph_html(GraphReport(**{**_fields(report), "run": run})))
    assert "not run" in with_module(checker, "tr", "b")[0].text


def test_module_table_highlights_planned_critical_rows() -> None:
    checker = parse(render_graph_html(diamond_report()))
    critical = {
        e.attrs["data-module"]
        for e in checker.elements
        if e.tag == "tr" and "critical" in e.classes
    }
    assert critical == {"a", "b", "d"}


def test_single_module_program_renders() -> None:
    module = ModuleView("only", "predict", (), 0, 500.0, 0.0)
    run = RunView("e", "completed", "t", 480.0, (ran("only", "completed", 0, 480),), ())
    report = GraphReport("one", 1, (module,), (("only",),), ("only",), 1, 500.0, run)
    checker = parse(render_graph_html(report))
    assert len([e for e in checker.elements if "node" in e.classes]) == 1
    assert len([e for e in checker.elements if "bar" in e.classes]) == 1


def test_dag_of_no_modules_says_so() -> None:
    assert "no modules" in parse(dag_svg([], [], ())).data


def test_dag_places_modules_missing_from_levels_by_their_own_level() -> None:
    modules = [ModuleView("a", "python", (), 0), ModuleView("late", "python", ("a", "ghost"), 2)]
    checker = parse(dag_svg(modules, [["a"]], ()))
    nodes = [e for e in checker.elements if "node" in e.classes]
    assert [n.attrs["data-module"] for n in nodes] == ["a", "late"]
    level_labels = [e for e in checker.elements if e.attrs.get("class") == "lvl"]
    assert len(level_labels) == 3
    edges = [e for e in checker.elements if "edge" in e.classes]
    assert [(e.attrs["data-from"], e.attrs["data-to"]) for e in edges] == [("a", "late")]


def test_dag_draws_critical_edges_after_the_others() -> None:
    checker = parse(dag_svg(diamond_report().modules, diamond_report().levels, ("a", "c", "d")))
    edges = [e for e in checker.elements if "edge" in e.classes]
    assert ["critical" in e.classes for e in edges] == [False, False, True, True]


def test_long_names_are_shortened_in_drawings_but_kept_whole_in_tooltips() -> None:
    name = "a_really_long_module_name_that_goes_on_and_on"
    checker = parse(dag_svg([ModuleView(name, "python", (), 0)], [[name]], ()))
    shown = [e for e in checker.elements if e.attrs.get("class") == "name"]
    assert shown[0].text[0].endswith("…")
    assert any(name in t for t in checker.data if t.startswith(name + "\n"))


@pytest.mark.parametrize(("n", "fan"), [(500, 10), (500, 1), (500, 500)])
def test_five_hundred_modules_stay_under_two_megabytes(n: int, fan: int) -> None:
    page = render_graph_html(chain_report(n, fan=fan))
    assert len(page.encode()) < 2_000_000
    checker = parse(page)
    assert len([e for e in checker.elements if "node" in e.classes]) == n
    assert len([e for e in checker.elements if "row" in e.classes]) == n


def test_program_without_modules_renders_dashes_for_the_critical_path() -> None:
    report = GraphReport("empty", None, (), (), (), 0, None, None)
    checker = parse(render_graph_html(report))
    path_line = next(e for e in checker.elements if e.attrs.get("class") == "path")
    assert "".join(path_line.text) == "planned critical path:—"


# --- templates ---------------------------------------------------------------------------------


def test_the_markup_comes_from_templates_shipped_in_the_package() -> None:
    templates = resources.files("dspex.reports") / "templates"
    shipped = sorted(t.name for t in templates.iterdir() if t.name.endswith(".j2"))
    assert shipped == ["dag.svg.j2", "gantt.svg.j2", "graph.html.j2"]
    # the module lays out and the templates write: no tag is spelled in its code
    tree = ast.parse(inspect.getsource(html_report))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    tags = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
        and re.search(r"</?[a-zA-Z!]", node.value)
    ]
    assert tags == []


HOSTILE = "<u>x</u> \" ' & <script>alert(1)</script>"


def test_every_text_and_attribute_is_escaped_and_decodes_back_intact() -> None:
    name = f"m{HOSTILE}"
    modules = (
        ModuleView(name, f"kind{HOSTILE}", (), 0, 5.0, 0.0, f"backend{HOSTILE}"),
        ModuleView("after", "python", (name,), 1),
    )
    steps = (
        ran(name, "failed", 0, 5, error_code=f"code{HOSTILE}"),
        ran("after", "completed", 5, 9),
    )
    run = RunView(f"id{HOSTILE}", f"run{HOSTILE}", f"at{HOSTILE}", 9.0, steps, (name, "after"))
    report = GraphReport(
        f"prog{HOSTILE}", 3, modules, ((name,), ("after",)), (name, "after"), 1, 9.0, run
    )
    page = render_graph_html(report)
    checker = parse(page)
    assert "<script" not in page
    assert "<u>" not in page
    assert not [e for e in checker.elements if e.tag in {"script", "u"}]
    text = "".join(checker.data)
    for shown in (f"prog{HOSTILE}", f"id{HOSTILE}", f"run{HOSTILE}", f"at{HOSTILE}"):
        assert shown in text
    for shown in (f"kind{HOSTILE}", f"code{HOSTILE}", name):
        assert shown in text
    assert f"backend: backend{HOSTILE}" in text  # in the node's tooltip
    # attributes keep the value whole: quotes cannot end them early
    assert with_module(checker, "tr", name)[0].attrs["data-module"] == name
    edge = next(e for e in checker.elements if "edge" in e.classes)
    assert (edge.attrs["data-from"], edge.attrs["data-to"]) == (name, "after")
    path = next(e for e in checker.elements if e.attrs.get("class") == "path")
    assert path.attrs["title"] == f"{name} → after"

"""``dspex graph PROGRAM [--html FILE]``: the plan of a program and the Gantt chart of its last run.

Prints the levels (which modules may run together), the critical path, the width, the estimated
makespan and every module's slack. With ``--html FILE`` it also writes a self-contained page
(:mod:`dspex.reports.html`) with the dependency graph and a Gantt chart of the last recorded run,
its critical path highlighted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    VersionOption,
    console,
    escape,
    fail,
    format_ms,
    print_model,
    run_with_runtime,
)

if TYPE_CHECKING:
    from dspex import BatchProfile, GraphInfo, Runtime
    from dspex.reports import GraphReport

__all__ = ["graph", "graph_report", "render_batch_profile"]


def graph(
    program: Annotated[str, typer.Argument(help="the program name")],
    version: VersionOption = None,
    html: Annotated[
        Path | None,
        typer.Option("--html", help="also write a self-contained HTML report to this file"),
    ] = None,
    batch: Annotated[
        str | None,
        typer.Option(
            "--batch",
            help="also show where this batch's time went (id or unique prefix): per-module "
            "durations over its items and its slowest items",
        ),
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Show a program's plan: levels, critical path, width, makespan and slack."""

    async def work(rt: Runtime) -> GraphInfo:
        batch_id = await rt.resolve_id(batch, kind="batch") if batch is not None else None
        return await rt.graph(program, version, batch_id=batch_id)

    info = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if html is not None:
        from dspex.reports import render_graph_html

        try:
            html.write_text(render_graph_html(graph_report(info)), encoding="utf-8")
        except OSError as exc:
            fail("bad_arguments", f"cannot write {str(html)!r}: {exc}", as_json=as_json)
    print_model(info, _render, as_json=as_json)
    if html is not None and not as_json:
        console.print(f"wrote {escape(html)}", soft_wrap=True)


def _render(info: GraphInfo) -> None:
    plan = info.plan
    console.print(f"[bold]{escape(info.program)}[/] v{info.version}")
    levels = Table(title="Levels")
    levels.add_column("level", justify="right")
    levels.add_column("modules", overflow="fold")
    for index, names in enumerate(plan.get("levels", [])):
        levels.add_row(str(index), escape(", ".join(names)))
    console.print(levels)
    critical = plan.get("critical_path", [])
    console.print(f"critical path: {escape(' → '.join(critical) or '-')}", soft_wrap=True)
    console.print(
        f"width: {escape(plan.get('width', '-'))}  "
        f"estimated makespan: {format_ms(plan.get('estimated_makespan'))}"
    )
    table = Table(title="Modules")
    table.add_column("module")
    table.add_column("kind")
    table.add_column("depends on", overflow="fold")
    table.add_column("estimate (source)", justify="right")
    table.add_column("slack", justify="right")
    table.add_column("critical")
    durations: dict[str, Any] = plan.get("durations_ms", {})
    slack: dict[str, Any] = plan.get("slack", {})
    sources: dict[str, Any] = plan.get("duration_sources", {})
    for module in info.modules:
        table.add_row(
            escape(module.name),
            escape(module.kind),
            escape(", ".join(module.depends_on) or "-"),
            _estimate(durations.get(module.name), sources.get(module.name)),
            format_ms(slack.get(module.name)),
            "yes" if module.name in critical else "",
        )
    console.print(table)
    console.print(
        "estimate sources: recorded = median of recorded runs, spec = the program's estimated_ms,"
        " default = the kind's default",
        soft_wrap=True,
        style="dim",
    )
    if info.batch is not None:
        render_batch_profile(info.batch)
    run = info.last_run
    if run is None:
        console.print("last run: none recorded")
    else:
        console.print(
            f"last run: {escape(run.execution_id)} {escape(run.status)} in "
            f"{format_ms(run.duration_ms)}",
            soft_wrap=True,
        )


def graph_report(info: GraphInfo) -> GraphReport:
    """The HTML report's view of a program's :class:`GraphInfo`."""
    from dspex.reports import graph_report_from_info

    return graph_report_from_info(info)


def _estimate(value: float | None, source: str | None) -> str:
    return format_ms(value) if source is None else f"{format_ms(value)} ({source})"


def render_batch_profile(profile: BatchProfile) -> None:
    """Where a batch's time went: per-module durations over its items, its slowest items."""
    table = Table(title=f"Batch {profile.batch_id}: module durations over its items")
    table.add_column("module")
    for column in ("runs", "p50", "p95", "max"):
        table.add_column(column, justify="right")
    for m in profile.modules:
        table.add_row(
            escape(m.module),
            str(m.runs),
            format_ms(m.p50_ms),
            format_ms(m.p95_ms),
            format_ms(m.max_ms),
        )
    console.print(table)
    if profile.sampled < profile.items:
        console.print(f"(from the {profile.sampled} slowest of {profile.items} items)", style="dim")
    slow = ", ".join(
        f"#{item.batch_index} {format_ms(item.duration_ms)} ({item.status})"
        for item in profile.slowest
    )
    console.print(f"slowest items: {escape(slow or '-')}", soft_wrap=True)

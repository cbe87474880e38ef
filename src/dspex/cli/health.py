"""``dspex health [--level L] [--json]``: exit 0 healthy, 1 degraded, 2 unhealthy.

An unreachable or broken database is a finding, not an error: it is reported as an ``unhealthy``
check (each check has its own timeout, so nothing hangs) and the command still prints a report.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    check_choice,
    console,
    escape,
    format_ms,
    handle_errors,
    print_model,
)

if TYPE_CHECKING:
    from dspex import HealthReport

__all__ = ["health"]

_LEVELS = ("standard", "comprehensive", "deep")
_COLOURS = {"healthy": "green", "degraded": "yellow", "unhealthy": "red"}
_START_TIMEOUT = 5.0


def health(
    level: Annotated[
        str, typer.Option("--level", "-l", help="standard | comprehensive | deep")
    ] = "standard",
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", min=0.001, help="seconds each check may take"),
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Check database, backends, breakers and process: exit 0 healthy, 1 degraded, 2 unhealthy."""
    check_choice(level, _LEVELS, "level", as_json=as_json)
    import dspex

    async def go() -> HealthReport:
        rt = dspex.Runtime.open(database_url, config=config)
        try:
            try:
                # The embedded database migrates itself on first use, as for every command;
                # when the store cannot start, the report says why.
                async with asyncio.timeout(_START_TIMEOUT):
                    await rt.start()
            except (dspex.DspexError, TimeoutError):
                pass
            return await rt.health(level, timeout=timeout)
        finally:
            await rt.aclose()

    with handle_errors(as_json=as_json):
        report = asyncio.run(go())
    print_model(report, _render, as_json=as_json)
    raise typer.Exit(report.exit_code)


def _detail_text(details: dict[str, Any]) -> str:
    shown = []
    for key in ("latency_ms", "revision", "breaker", "pending", "running", "expired", "rss_mb"):
        if details.get(key) is not None:
            shown.append(f"{key}={details[key]}")
    return " ".join(shown)


def _render(report: HealthReport) -> None:
    table = Table(title=f"dspex health ({report.level})")
    table.add_column("check")
    table.add_column("status")
    table.add_column("time", justify="right")
    table.add_column("reason / details", overflow="fold")
    for check in report.checks:
        colour = _COLOURS[check.status]
        table.add_row(
            escape(check.name),
            f"[{colour}]{check.status}[/]",
            format_ms(check.duration_ms),
            escape(check.reason or _detail_text(check.details)),
        )
    console.print(table)
    _render_statistics(report)
    colour = _COLOURS[report.status]
    console.print(
        f"overall: [{colour}]{report.status}[/]  ({format_ms(report.duration_ms)})", soft_wrap=True
    )
    for advice in report.recommendations:
        console.print(f"- {advice}", soft_wrap=True, markup=False)


def _percent(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _render_statistics(report: HealthReport) -> None:
    """What ``comprehensive`` and ``deep`` add: per-program statistics, errors and trends."""
    checks = {check.name: check for check in report.checks}
    performance = checks.get("performance")
    if performance is not None and performance.details.get("programs"):
        hours = performance.details.get("window_hours", 0)
        table = Table(title=f"programs (last {hours:g} h)")
        for column in ("program", "executions", "success", "p50", "p95"):
            table.add_column(column, justify="left" if column == "program" else "right")
        for row in performance.details["programs"]:
            table.add_row(
                escape(str(row["program"])),
                str(row["executions"]),
                _percent(row["success_rate"]),
                format_ms(row["p50_ms"]),
                format_ms(row["p95_ms"]),
            )
        console.print(table)
    errors = checks.get("errors")
    if errors is not None and errors.details.get("top_error_codes"):
        codes = ", ".join(f"{e['code']} ×{e['count']}" for e in errors.details["top_error_codes"])
        console.print(f"top error codes: {escape(codes)}", soft_wrap=True)
    trends = checks.get("trends")
    if trends is not None and trends.details.get("programs"):
        hours = trends.details.get("recent_hours", 24)
        table = Table(title=f"trends: last {hours:g} h against the days before")
        for column in ("program", "success (recent / before)", "p95 (recent / before)", "p95 ×"):
            table.add_column(column, justify="left" if column == "program" else "right")
        for row in trends.details["programs"]:
            ratio = row["p95_ratio"]
            table.add_row(
                escape(str(row["program"])),
                f"{_percent(row['recent_success_rate'])} / {_percent(row['earlier_success_rate'])}",
                f"{format_ms(row['recent_p95_ms'])} / {format_ms(row['earlier_p95_ms'])}",
                "-" if ratio is None else f"{ratio:.2f}",
            )
        console.print(table)

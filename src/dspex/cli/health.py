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
    colour = _COLOURS[report.status]
    console.print(
        f"overall: [{colour}]{report.status}[/]  ({format_ms(report.duration_ms)})", soft_wrap=True
    )
    for advice in report.recommendations:
        console.print(f"- {advice}", soft_wrap=True, markup=False)

"""``dspex cleanup [--dry-run] [--older-than 30d] [--vacuum] [--json]``: repair what dead
workers left.

Re-queues or fails executions whose lease expired, finishes batches whose items are all done,
fails batches whose driver died (printing how to resume each), moves programs stuck
``initializing`` to ``error`` and, with ``--older-than``, deletes terminal executions and
finished batches older than that and the breaker rows of backends no longer configured; SQLite
then gives the freed space back. ``--dry-run`` prints what would change and changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    console,
    escape,
    older_than_age,
    print_model,
    run_with_runtime,
)

if TYPE_CHECKING:
    from dspex import CleanupReport, Runtime

__all__ = ["cleanup"]

_CATEGORIES = (
    ("requeued", "re-queued (lease expired)"),
    ("lease_expired", "failed (lease expired)"),
    ("batches_finalized", "batches finished"),
    ("batches_stalled", "batches whose driver died → failed"),
    ("programs_errored", "programs stuck initializing → error"),
    ("executions_deleted", "executions deleted (retention)"),
    ("batches_deleted", "batches deleted (retention)"),
    ("breakers_deleted", "breakers of removed backends deleted"),
    ("cache_expired", "expired response cache entries deleted"),
)


def cleanup(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="report what would change; change nothing")
    ] = False,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="delete finished executions older than this (30d, 12h, 90m; 0d: all of them)",
        ),
    ] = None,
    attempt_cap: Annotated[
        int, typer.Option("--attempt-cap", min=1, help="attempts before an item is failed")
    ] = 3,
    stuck_after: Annotated[
        float,
        typer.Option("--stuck-after", min=0.001, help="seconds a program may stay initializing"),
    ] = 600.0,
    stalled_after: Annotated[
        float,
        typer.Option(
            "--stalled-after",
            min=0.001,
            help="seconds an open batch may go with nothing running before its driver is "
            "taken for dead",
        ),
    ] = 600.0,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum",
            help="SQLite made before incremental vacuum: rebuild it once to give space back",
        ),
    ] = False,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-queue or fail executions of dead workers, finish batches, delete old executions."""
    retention = older_than_age(older_than, as_json=as_json)

    async def work(rt: Runtime) -> CleanupReport:
        return await rt.cleanup(
            dry_run=dry_run,
            older_than=retention,
            attempt_cap=attempt_cap,
            stuck_initializing_after=stuck_after,
            stalled_after=stalled_after,
            vacuum=vacuum,
        )

    report = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    print_model(report, _render, as_json=as_json)


def _render(report: CleanupReport) -> None:
    title = "dspex cleanup (dry run: nothing changed)" if report.dry_run else "dspex cleanup"
    table = Table(title=title)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("first ids", overflow="fold")
    for key, label in _CATEGORIES:
        items = getattr(report, key)
        shown = ", ".join(items.ids[:5]) + (" …" if items.count > 5 else "")
        table.add_row(label, str(items.count), escape(shown))
    console.print(table)
    verb = "would change" if report.dry_run else "changed"
    console.print(f"{verb}: {report.total}", soft_wrap=True)
    for command in report.resume_commands:
        console.print(f"resume with: {escape(command)}", soft_wrap=True)
    space = report.space
    if space is not None:
        console.print(
            f"space: {space.freed_bytes} bytes given back, {space.free_bytes} still free"
            f" (auto_vacuum {space.auto_vacuum}{', vacuumed' if space.vacuumed else ''})",
            soft_wrap=True,
        )
        if space.vacuum_needed:
            console.print(
                "this SQLite file predates incremental vacuum: run `dspex cleanup --vacuum`"
                " once to give deleted space back (it rewrites the file)",
                soft_wrap=True,
            )

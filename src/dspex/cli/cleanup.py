"""``dspex cleanup [--dry-run] [--older-than 30d] [--json]``: repair what dead workers left.

Re-queues or fails executions whose lease expired, finishes batches whose items are all done,
moves programs stuck ``initializing`` to ``error`` and, with ``--older-than``, deletes terminal
executions older than that. ``--dry-run`` prints what would change and changes nothing.
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
    fail,
    print_model,
    run_with_runtime,
)

if TYPE_CHECKING:
    from datetime import timedelta

    from dspex import CleanupReport, Runtime

__all__ = ["cleanup"]

_CATEGORIES = (
    ("requeued", "re-queued (lease expired)"),
    ("lease_expired", "failed (lease expired)"),
    ("batches_finalized", "batches finished"),
    ("programs_errored", "programs stuck initializing → error"),
    ("executions_deleted", "executions deleted (retention)"),
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
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Re-queue or fail executions of dead workers, finish batches, delete old executions."""
    from dspex import parse_age
    from dspex.errors import ValidationError

    retention: timedelta | None = None
    if older_than is not None:
        try:
            retention = parse_age(older_than)
        except ValidationError as exc:
            fail("bad_arguments", f"--older-than: {exc.message}", as_json=as_json)

    async def work(rt: Runtime) -> CleanupReport:
        return await rt.cleanup(
            dry_run=dry_run,
            older_than=retention,
            attempt_cap=attempt_cap,
            stuck_initializing_after=stuck_after,
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

"""``dspex cache stats|clear``: what the response cache holds, and emptying it.

The cache keeps validated LM responses by exact request in the database, shared by every process
on it (see ``[cache]`` in ``dspex.toml`` and ``--cache`` on ``run``, ``batch``, ``evaluate`` and
``optimize``). ``stats`` counts its entries (expired ones apart), their size and models, and the
hits recorded on steps with the cost they saved; ``clear`` deletes entries: all of them, a
program's, or those stored longer ago than an age.
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
    format_time,
    format_usd,
    older_than_age,
    print_json,
    print_model,
    run_with_runtime,
)

if TYPE_CHECKING:
    from dspex import CacheCleared, CacheStats, Runtime

__all__ = ["app", "clear", "stats"]

app = typer.Typer(help="The response cache: what it holds, and emptying it.", no_args_is_help=True)

ProgramOption = Annotated[
    str | None, typer.Option("--program", "-p", help="only the entries this program made")
]


@app.command("stats")
def stats(
    program: ProgramOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Entries, their size and models, and the hits recorded on steps with the cost saved."""

    async def work(rt: Runtime) -> CacheStats:
        return await rt.cache_stats(program=program)

    found = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(found.to_dict())
        return
    where = f" of {escape(program)}" if program is not None else ""
    console.print(
        f"response cache{where}: {found.entries} entries ({found.expired} expired), "
        f"{_size(found.size_bytes)}",
        soft_wrap=True,
    )
    console.print(
        f"  hits recorded: {found.hits}  cost saved: {format_usd(found.cost_saved_usd)}",
        soft_wrap=True,
    )
    if found.oldest is not None and found.newest is not None:
        console.print(
            f"  stored from {format_time(found.oldest)} to {format_time(found.newest)}",
            soft_wrap=True,
        )
    if found.by_model:
        table = Table(title="By model")
        table.add_column("model", overflow="fold")
        table.add_column("entries", justify="right")
        table.add_column("size", justify="right")
        for row in found.by_model:
            table.add_row(escape(row.model), str(row.entries), _size(row.size_bytes))
        console.print(table)


@app.command("clear")
def clear(
    program: ProgramOption = None,
    older_than: Annotated[
        str | None,
        typer.Option("--older-than", help="only entries stored longer ago (30d, 12h, 90m)"),
    ] = None,
    expired: Annotated[bool, typer.Option("--expired", help="only expired entries")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would be deleted; delete nothing")
    ] = False,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete response cache entries: all, a program's, older ones or expired ones."""
    age = older_than_age(older_than, as_json=as_json)

    async def work(rt: Runtime) -> CacheCleared:
        return await rt.clear_cache(
            program=program, older_than=age, expired=expired, dry_run=dry_run
        )

    cleared = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    print_model(cleared, _render_cleared, as_json=as_json)


def _render_cleared(cleared: CacheCleared) -> None:
    verb = "would delete" if cleared.dry_run else "deleted"
    console.print(f"{verb} {cleared.deleted} response cache entries", soft_wrap=True)


def _size(size: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"

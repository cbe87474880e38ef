"""``dspex db upgrade``: bring the configured database's schema up to date."""

from __future__ import annotations

import typer

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    console,
    escape,
    handle_errors,
    print_json,
)

__all__ = ["app"]

app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Migrate the database to the latest schema (creating it if needed).

    SQLite databases also migrate themselves when the runtime opens them; a PostgreSQL database
    is migrated only by this command, so a deployment decides when its schema changes.
    """

    import asyncio

    import dspex

    with handle_errors(as_json=as_json):
        status = asyncio.run(dspex.upgrade_database(database_url, config=config))
    if as_json:
        print_json(status.model_dump(mode="json"))
        return
    if status.upgraded:
        console.print(
            escape(
                f"migrated {status.database_url}: {status.previous_revision or 'empty'} -> "
                f"{status.revision}"
            ),
            soft_wrap=True,
        )
    else:
        console.print(
            escape(f"database is up to date: {status.database_url} (revision {status.revision})"),
            soft_wrap=True,
        )

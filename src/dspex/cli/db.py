"""``dspex db upgrade``: bring the configured database's schema up to date."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    console,
    exit_code_for,
    handle_errors,
    print_json,
    report_error,
    run_with_runtime,
)
from dspex.errors import StorageError

if TYPE_CHECKING:
    from dspex.runtime import Runtime

__all__ = ["app", "hide_password"]

app = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def hide_password(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


@app.command("upgrade")
def upgrade(
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Migrate the database to the latest schema (creating it if needed).

    SQLite databases migrate themselves when the runtime opens them; a PostgreSQL database is
    only checked (its schema is migrated by the deployment, see the report of this command).
    """

    from dspex.config import load_settings

    with handle_errors(as_json=as_json):
        url = database_url or load_settings(config).resolved_database_url()

    async def work(rt: Runtime) -> None:
        return None  # opening the runtime is what migrates (SQLite) or checks (PostgreSQL)

    try:
        run_with_runtime(RuntimeOptions(url, config, as_json, reraise=True), work)
    except StorageError as exc:
        message = exc.message
        if not url.startswith("sqlite"):
            # The runtime migrates only SQLite on open; its advice for an outdated server
            # schema ("run `dspex db upgrade`") would otherwise send the user in a circle.
            message += (
                " (dspex db upgrade migrates SQLite only for now: apply the store migrations "
                "to this database with alembic)"
            )
        report_error(StorageError(message), as_json=as_json)
        raise typer.Exit(exit_code_for(exc)) from None
    shown = hide_password(url)
    if as_json:
        print_json({"database_url": shown, "upgraded": True})
    else:
        console.print(f"database is up to date: {shown}", soft_wrap=True)

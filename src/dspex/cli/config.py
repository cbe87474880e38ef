"""``dspex config show [--json]``: the effective settings and where each value came from.

Every setting is listed by its dotted name (``defaults.retry.max_attempts``) with its value and
its source: ``default``, ``file`` (the ``dspex.toml`` path), ``environment`` (the ``DSPEX_*``
variable) or ``flag`` (``--attempt-timeout``/``--max-attempts``/``--capture-messages`` given
here, as on ``dspex run``).
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from dspex.cli._common import (
    AttemptTimeoutOption,
    CaptureMessagesOption,
    ConfigOption,
    JsonOption,
    MaxAttemptsOption,
    console,
    defaults_flags,
    escape,
    handle_errors,
    print_json,
)

__all__ = ["app", "show"]

app = typer.Typer(help="The effective configuration.", no_args_is_help=True)

_COLOURS = {"default": "dim", "file": "cyan", "environment": "yellow", "flag": "magenta"}


@app.command("show")
def show(
    attempt_timeout: AttemptTimeoutOption = None,
    max_attempts: MaxAttemptsOption = None,
    capture_messages: CaptureMessagesOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Print every setting in effect and where its value came from."""
    from dspex.config import effective_settings, load_settings_sources

    with handle_errors(as_json=as_json):
        settings, origins = load_settings_sources(
            config, flags=defaults_flags(attempt_timeout, max_attempts, capture_messages)
        )
    values = effective_settings(settings, origins)
    if as_json:
        print_json(
            {
                "source": settings.source,
                "settings": {v.key: v.to_dict() for v in values},
            }
        )
        return
    table = Table(title=f"settings ({escape(settings.source or 'no file: defaults')})")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("from")
    for value in values:
        colour = _COLOURS[value.source]
        where = value.source if value.origin is None else f"{value.source} {value.origin}"
        table.add_row(
            escape(value.key), escape(_show(value.value)), f"[{colour}]{escape(where)}[/]"
        )
    console.print(table)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value

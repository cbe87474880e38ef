"""Helpers every command group shares: consoles, exit codes, reading spec files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "console",
    "err_console",
    "print_json",
    "read_structured_file",
    "usage_error",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def usage_error(message: str) -> NoReturn:
    """Report an unusable argument on stderr and exit with code 2 (no stack trace)."""
    err_console.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout, no Rich markup or wrapping."""
    typer.echo(json.dumps(data, indent=2, default=str))


def read_structured_file(path: Path) -> Any:
    """Load a YAML or JSON file; an unreadable or malformed file is a usage error."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        usage_error(f"cannot read {str(path)!r}: {exc}")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        usage_error(
            f"{str(path)!r} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
            f"{exc}"
        )

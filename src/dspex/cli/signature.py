"""``dspex signature``: validate a signature and export its schema.

SPEC is a signature string (``"question: str -> answer: str"``) or the path of a YAML/JSON file
holding the structured form (or a document with a ``signature:`` mapping or string in it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

import dspex
from dspex.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    check_choice,
    console,
    err_console,
    escape,
    print_json,
    read_structured_file,
    usage_error,
)
from dspex.errors import SignatureError

__all__ = ["app", "load_spec"]

app = typer.Typer(help="Validate signatures and export their schemas.", no_args_is_help=True)

_LEVELS = ("standard", "comprehensive", "deep")
_TARGETS = ("json_schema", "openai", "anthropic")
_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def load_spec(spec: str) -> str | Mapping[str, Any] | Any:
    """What SPEC stands for: the signature string itself, or the content of the file it names."""
    if "->" not in spec:
        path = Path(spec)
        if path.exists():
            if path.is_dir():
                usage_error(f"{spec!r} is a directory, not a signature file")
            data = read_structured_file(path)
            # A program file embeds its signature under ``signature:``.
            if isinstance(data, Mapping) and isinstance(data.get("signature"), Mapping):
                return data["signature"]
            return data
        if path.suffix.lower() in _FILE_SUFFIXES or "/" in spec:
            usage_error(f"file {spec!r} does not exist")
    return spec


@app.command("validate")
def validate(
    spec: Annotated[str, typer.Argument(help="a signature string or a YAML/JSON file")],
    level: Annotated[
        str, typer.Option("--level", "-l", help="standard | comprehensive | deep")
    ] = "standard",
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Check a signature; exit 0 when valid, 1 when not, 2 on unusable arguments."""
    check_choice(level, _LEVELS, "level", as_json=False)
    loaded = load_spec(spec)
    report = dspex.validate_signature(loaded, level=level)
    if as_json:
        print_json(report.model_dump())
    else:
        _render(report)
    raise typer.Exit(EXIT_OK if report.valid else EXIT_FAILED)


def _not_run(step: Any) -> bool:
    """A check that did not run (the signature could not be built), rather than one that failed."""
    return [p.code for p in step.problems] == ["not_run"]


def _render(report: Any) -> None:
    verdict = "[bold green]valid[/]" if report.valid else "[bold red]invalid[/]"
    console.print(f"Signature is {verdict} (level: {escape(report.level)})")
    steps = Table(title="Steps", show_lines=False)
    steps.add_column("step")
    steps.add_column("passed")
    steps.add_column("problems", justify="right")
    for step in report.steps:
        if _not_run(step):
            steps.add_row(escape(step.name), "[dim]not run[/]", "-")
            continue
        mark = "[green]yes[/]" if step.passed else "[red]no[/]"
        steps.add_row(escape(step.name), mark, str(len(step.problems)))
    console.print(steps)
    if any(not _not_run(step) and step.problems for step in report.steps):
        table = Table(title="Problems")
        table.add_column("step")
        table.add_column("field")
        table.add_column("code")
        table.add_column("message", overflow="fold")
        for step in report.steps:
            if _not_run(step):
                continue  # shown as "not run" above
            for p in step.problems:
                table.add_row(
                    escape(step.name), escape(p.field or "-"), escape(p.code), escape(p.message)
                )
        console.print(table)
    if report.complexity is not None:
        c = report.complexity
        console.print(
            f"Complexity: {escape(c.rating)} (score {c.score}, depth {c.max_depth}, "
            f"{c.input_fields} inputs, {c.output_fields} outputs)"
        )
    if report.cost_estimate is not None:
        e = report.cost_estimate
        console.print(
            f"Estimated tokens per call: {e.total_tokens} "
            f"({e.prompt_tokens} prompt + {e.completion_tokens} completion, {escape(e.method)})"
        )


@app.command("schema")
def schema(
    spec: Annotated[str, typer.Argument(help="a signature string or a YAML/JSON file")],
    target: Annotated[
        str, typer.Option("--target", "-t", help="json_schema | openai | anthropic")
    ] = "json_schema",
    part: Annotated[str, typer.Option("--part", help="outputs (default) | inputs")] = "outputs",
) -> None:
    """Print the JSON Schema (or tool definition) of a signature's outputs."""
    check_choice(target, _TARGETS, "target", as_json=False)
    check_choice(part, ("outputs", "inputs"), "part", as_json=False)
    loaded = load_spec(spec)
    try:
        if isinstance(loaded, str):
            sig = dspex.Signature.parse(loaded)
        elif isinstance(loaded, Mapping):
            sig = dspex.Signature.from_dict(loaded)
        else:
            raise SignatureError(
                "signature is invalid:",
            )
    except SignatureError as exc:
        err_console.print("[bold red]invalid signature[/]")
        for e in exc.errors or []:
            err_console.print(
                f"  {escape(e.field or '-')}: {escape(e.message)} [dim]({escape(e.code)})[/]"
            )
        if not exc.errors:
            err_console.print("  the file does not hold a signature string or mapping")
        raise typer.Exit(EXIT_FAILED) from None
    print_json(sig.json_schema(target, part=part))

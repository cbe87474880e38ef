"""``dspex dataset export PROGRAM``: recorded executions as JSONL examples.

Each line holds an execution's inputs and (when it completed) its outputs under their field
names, ready as a trainset or a devset for ``dspex evaluate``, plus where it came from under
``_dspex`` (which evaluation ignores). ``--status failed`` exports failures for labelling:
inputs and the error, no outputs. Lines go to ``--out`` or, without it, to stdout (the summary
then goes to stderr). Executions are read and written a page at a time.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    console,
    err_console,
    escape,
    fail,
    print_json,
    run_with_runtime,
)

if TYPE_CHECKING:
    from dspex import DatasetExport, Runtime

__all__ = ["app"]

app = typer.Typer(help="Datasets from recorded executions.", no_args_is_help=True)


@app.command("export")
def export(
    program: Annotated[str, typer.Argument(help="the program name")],
    version: Annotated[
        int | None, typer.Option("--version", "-v", min=1, help="only this version")
    ] = None,
    status: Annotated[
        str, typer.Option("--status", "-s", help="completed | failed (to label) | all")
    ] = "completed",
    since: Annotated[
        str | None, typer.Option("--since", help="only this recent, like 7d, 12h or 90m")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="at most N")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="the JSONL file (default: stdout)")
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Write a program's recorded executions as JSONL examples (inputs and outputs)."""
    if as_json and out is None:
        fail("bad_arguments", "--json needs --out: the examples go to stdout", as_json=True)

    async def work(rt: Runtime) -> DatasetExport:
        return await rt.export_dataset(
            program,
            sys.stdout if out is None else out,
            version=version,
            status=status,
            since=since,
            limit=limit,
        )

    done = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(done.model_dump(mode="json"))
        return
    where = done.out or "stdout"
    summary = (
        f"exported {done.count} {'/'.join(done.statuses)} executions of {done.program}"
        f" ({done.with_outputs} with outputs) to {where}"
    )
    (console if out is not None else err_console).print(escape(summary), soft_wrap=True)

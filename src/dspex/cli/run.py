"""``dspex run PROGRAM -i key=value …``: one execution of a registered, ready program.

``-i`` values are typed by the program's signature: a field that only takes strings gets the
raw text; any other field gets the value parsed as JSON (``-i k=3``, ``-i tags='["a","b"]'``,
``-i flag=true``), or the raw text when it is not JSON, so that signature validation reports the
type problem in its own words. ``--input-json`` takes a JSON object or ``@file.json``; ``-i``
overrides its keys.

``--stream`` shows the run as it goes: a line as each module starts and finishes, and the final
module's answer token by token as the backend streams it (``openai`` backends; ``dspy`` ones
through DSPy's stream listeners), then the usual result. With ``--json`` it prints one JSON
event per line instead, the last one ``done`` with the execution record. SIGTERM while streaming
stops the output; the execution runs on to its end and is recorded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_args

import typer
from rich.table import Table

from dspex import Strategy
from dspex.cli._common import (
    EXIT_FAILED,
    AttemptTimeoutOption,
    BackendOption,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    MaxAttemptsOption,
    RuntimeOptions,
    RunVersionOption,
    Terminated,
    check_choice,
    console,
    defaults_flags,
    err_console,
    escape,
    fail,
    format_ms,
    print_model,
    run_with_runtime,
)

if TYPE_CHECKING:
    from dspex import ExecutionEvent, ExecutionResult, Runtime

__all__ = ["format_value", "input_is_text", "parse_inputs", "run"]

_STRATEGIES: tuple[str, ...] = get_args(Strategy)


def input_is_text(schema: Mapping[str, Any]) -> bool:
    """Whether a field's JSON Schema accepts strings only (``null`` aside, for optional fields)."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        typed = [o for o in options if isinstance(o, Mapping) and o.get("type") != "null"]
        return bool(typed) and all(input_is_text(o) for o in typed)
    return schema.get("type") == "string"


def _typed_value(raw: str, schema: Mapping[str, Any] | None) -> Any:
    if schema is not None and input_is_text(schema):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _read_input_json(text: str, *, as_json: bool) -> dict[str, Any]:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(
                "bad_arguments",
                f"cannot read --input-json file {str(path)!r}: {exc}",
                as_json=as_json,
            )
    try:
        data = json.loads(text)
    except ValueError as exc:
        fail("bad_arguments", f"--input-json is not valid JSON: {exc}", as_json=as_json)
    if not isinstance(data, dict):
        fail("bad_arguments", "--input-json must be a JSON object", as_json=as_json)
    return data


def parse_inputs(
    pairs: Sequence[str],
    input_json: str | None,
    properties: Mapping[str, Mapping[str, Any]],
    *,
    as_json: bool = False,
) -> dict[str, Any]:
    """The execution inputs from ``--input-json`` and ``-i key=value`` pairs (which win).

    Args:
        pairs: the ``-i`` values, each ``key=value``.
        input_json: a JSON object, or ``@path`` of a file holding one.
        properties: the JSON Schema of each input field (from the program signature).
        as_json: report argument mistakes as JSON.
    """
    inputs: dict[str, Any] = _read_input_json(input_json, as_json=as_json) if input_json else {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            fail("bad_arguments", f"-i expects key=value, got {pair!r}", as_json=as_json)
        inputs[key] = _typed_value(raw, properties.get(key))
    return inputs


def run(
    program: Annotated[str, typer.Argument(help="the program name")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="an input as key=value (repeatable)"),
    ] = None,
    input_json: Annotated[
        str | None,
        typer.Option("--input-json", help="inputs as a JSON object, or @file.json"),
    ] = None,
    version: RunVersionOption = None,
    backend: BackendOption = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0.0, help="overall seconds for the run")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help=" | ".join(_STRATEGIES)),
    ] = None,
    attempt_timeout: AttemptTimeoutOption = None,
    max_attempts: MaxAttemptsOption = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="show steps as they start and finish and the answer token by token"
            " (with --json: one JSON event per line)",
        ),
    ] = False,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a program once; exit 0 completed, 1 failed, 2 on a user mistake."""
    check_choice(strategy, _STRATEGIES, "strategy", as_json=as_json)
    if input_json is not None and not input_json.startswith("@"):
        # a malformed object is reported before the database is opened
        _read_input_json(input_json, as_json=as_json)

    terminated = Terminated()

    async def work(rt: Runtime) -> ExecutionResult:
        spec = await rt.load_program(program, version)
        schema = spec.signature.json_schema("json_schema", part="inputs")
        values = parse_inputs(
            inputs or [], input_json, schema.get("properties", {}), as_json=as_json
        )
        with terminated.cancels_current_task():
            if stream:
                events = rt.stream(
                    program,
                    values,
                    version=version,
                    backend=backend,
                    timeout=timeout,
                    strategy=strategy,
                )
                return await _show(events, as_json=as_json)
            return await rt.execute(
                program,
                values,
                version=version,
                backend=backend,
                timeout=timeout,
                strategy=strategy,
            )

    try:
        flags = defaults_flags(attempt_timeout, max_attempts)
        result = run_with_runtime(RuntimeOptions(database_url, config, as_json, flags=flags), work)
    except asyncio.CancelledError:
        if not terminated.received:
            raise
        fail(
            "cancelled",
            "terminated by SIGTERM: the output stopped; the execution ran on and is recorded"
            if stream
            else "terminated by SIGTERM: the execution was cancelled and recorded as cancelled",
            as_json=as_json,
            exit_code=EXIT_FAILED,
        )
    if not (stream and as_json):  # streamed JSON ended with the done event
        print_model(result, _render, as_json=as_json)
    if result.status != "completed":
        raise typer.Exit(EXIT_FAILED)


async def _show(events: AsyncIterator[ExecutionEvent], *, as_json: bool) -> ExecutionResult:
    """Print a streamed execution's events as they come; its result (from ``done``)."""
    out = console.file
    field: tuple[str, str] | None = None  # the output field whose tokens are being printed
    async for event in events:
        if as_json:
            out.write(event.model_dump_json() + "\n")
            out.flush()
            if event.event == "done":
                return event.execution
            continue
        if field is not None and event.event != "token":
            out.write("\n")  # the streamed text ends its line
            field = None
        if event.event == "token":
            if field != (event.module, event.field):
                field = (event.module, event.field)
                out.write(f"{event.field}: ")
            out.write(event.text)
        elif event.event == "step_started":
            out.write(f"step {event.module} ({event.kind}) started\n")
        elif event.event == "step_finished":
            line = f"step {event.module} {event.status} in {format_ms(event.duration_ms)}"
            if event.error_code:
                line += f": {event.error_code}"
            out.write(line + "\n")
        elif event.event == "retry":
            out.write(f"step {event.module}: attempt {event.attempt}, the text above is void\n")
        elif event.event == "done":
            out.flush()
            return event.execution
        out.flush()
    raise RuntimeError("the stream ended without its done event")  # pragma: no cover


def format_value(value: Any) -> str:
    """A value for a table cell: text as is, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _render(result: ExecutionResult) -> None:
    if result.outputs:
        table = Table(title="Outputs")
        table.add_column("field")
        table.add_column("value", overflow="fold")
        for key, value in result.outputs.items():
            table.add_row(escape(key), escape(format_value(value)))
        console.print(table)
    colour = "green" if result.status == "completed" else "red"
    console.print(
        f"status: [{colour}]{escape(result.status)}[/]  duration: {format_ms(result.duration_ms)}  "
        f"program: {escape(result.program)} v{result.program_version}",
        soft_wrap=True,
    )
    console.print(f"execution: {escape(result.execution_id)}", soft_wrap=True)
    if result.error is not None:
        where = f" in module {result.error.module!r}" if result.error.module else ""
        err_console.print(
            f"[bold red]error:[/] {escape(f'{result.error.code}{where}: {result.error.message}')}",
            markup=True,
            soft_wrap=True,
        )

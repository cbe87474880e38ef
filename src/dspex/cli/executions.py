"""``dspex executions``: the recorded history of runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from dspex.cli._common import (
    WIDE_TERMINAL,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    check_choice,
    console,
    escape,
    format_ms,
    format_time,
    format_usd,
    print_json,
    print_model,
    run_with_runtime,
    status_markup,
)
from dspex.cli._crash import resolve_subject
from dspex.cli.run import format_value

if TYPE_CHECKING:
    from datetime import datetime

    from dspex import ExecutionDetail, ExecutionPage, Runtime

__all__ = ["app"]

app = typer.Typer(help="List and inspect recorded executions.", no_args_is_help=True)

_STATUSES = ("pending", "running", "completed", "failed", "cancelled")


@app.command("list")
def list_executions(
    program: Annotated[
        str | None, typer.Option("--program", "-p", help="only this program")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", "-s", help="pending | running | completed | failed | cancelled"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="page size")] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="continue after a previous page")
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """List executions, newest first, one page at a time."""
    check_choice(status, _STATUSES, "status", as_json=as_json)

    async def work(rt: Runtime) -> ExecutionPage:
        return await rt.list_executions(program=program, status=status, limit=limit, cursor=cursor)

    page = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(page.model_dump(mode="json"))
        return
    if not page.items:
        console.print("no executions")
        return
    # ids and statuses never wrap (they are copied into other commands); the rest may fold
    table = Table(title="Executions", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("program", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    # the creation time only fits a wide terminal next to a full id
    wide = console.width >= WIDE_TERMINAL
    if wide:
        table.add_column("created", no_wrap=True)
    table.add_column("error", overflow="fold")
    for item in page.items:
        created = [format_time(item.created_at)] if wide else []
        table.add_row(
            escape(item.execution_id),
            escape(f"{item.program} v{item.program_version}"),
            status_markup(item.status),
            format_ms(item.duration_ms),
            *created,
            escape(item.error_code or ""),
        )
    console.print(table)
    if page.next_cursor:
        console.print(f"more: --cursor {escape(page.next_cursor)}", soft_wrap=True)


@app.command("show")
def show(
    execution_id: Annotated[str, typer.Argument(help="the execution id, or a unique start of it")],
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Show one execution: inputs, outputs, steps with timings, attempts and error."""

    async def work(rt: Runtime) -> ExecutionDetail:
        return await rt.get_execution(await resolve_subject(rt, execution_id, "execution"))

    detail = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    print_model(detail, _render, as_json=as_json)


@app.command("cancel")
def cancel(
    execution_id: Annotated[str, typer.Argument(help="the execution id, or a unique start of it")],
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Cancel an execution wherever it runs: the process running it (a service replica, another
    `dspex run`) stops it at its next lease renewal; one nobody runs is cancelled at once."""

    async def work(rt: Runtime) -> ExecutionDetail:
        return await rt.cancel_execution(await resolve_subject(rt, execution_id, "execution"))

    detail = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(detail.model_dump(mode="json"))
        return
    name = escape(detail.execution_id)
    if detail.status == "cancelled":
        console.print(f"execution {name}: {status_markup(detail.status)}", soft_wrap=True)
    else:
        console.print(
            f"execution {name}: cancel requested; {escape(detail.worker_id or 'its worker')}"
            " stops it when it next renews its lease",
            soft_wrap=True,
        )


def _render(detail: ExecutionDetail) -> None:
    console.print(
        f"[bold]execution {escape(detail.execution_id)}[/]: {status_markup(detail.status)}",
        soft_wrap=True,
    )
    console.print(
        f"  program: {escape(detail.program)} v{detail.program_version}  "
        f"duration: {format_ms(detail.duration_ms)}  attempts: {detail.attempts}  "
        f"created: {format_time(detail.created_at)}",
        soft_wrap=True,
    )
    tokens = sum(counts.get("total_tokens", 0) for counts in detail.usage.values())
    console.print(f"  tokens: {tokens}  cost: {format_usd(detail.cost_usd)}", soft_wrap=True)
    if detail.batch_id is not None:
        index = f" (item {detail.batch_index})" if detail.batch_index is not None else ""
        console.print(f"  batch: {escape(detail.batch_id)}{index}", soft_wrap=True)
    for title, values in (("Inputs", detail.inputs), ("Outputs", detail.outputs)):
        if values:
            table = Table(title=title)
            table.add_column("field")
            table.add_column("value", overflow="fold")
            for key, value in values.items():
                table.add_row(escape(key), escape(format_value(value)))
            console.print(table)
    if detail.steps:
        steps = Table(title="Steps", box=box.SIMPLE_HEAD, pad_edge=False)
        steps.add_column("module", no_wrap=True)
        steps.add_column("status", no_wrap=True)
        steps.add_column("start", justify="right", no_wrap=True)
        steps.add_column("duration", justify="right", no_wrap=True)
        steps.add_column("attempts", justify="right")
        steps.add_column("backend", overflow="fold")
        costs = any(step.cost_usd for step in detail.steps)
        if costs:
            steps.add_column("cost", justify="right", no_wrap=True)
        hits = any(step.cache_hit for step in detail.steps)
        if hits:
            steps.add_column("cache", no_wrap=True)
        steps.add_column("error", overflow="fold")
        for step in detail.steps:
            error = f"{step.error_code}: {step.error_message}" if step.error_code else ""
            cost = [format_usd(step.cost_usd)] if costs else []
            if hits:
                saved = f"hit (saved {format_usd(step.cost_saved_usd)})"
                cost.append(saved if step.cache_hit else "-")
            steps.add_row(
                escape(step.module),
                status_markup(step.status),
                format_ms(step.started_ms),
                format_ms(step.duration_ms),
                str(step.attempts),
                escape(step.backend or "-"),
                *cost,
                escape(error),
            )
        console.print(steps)
        _render_step_data(detail)
    _render_attempts(detail)
    _render_messages(detail)
    if detail.error is not None:
        where = f" in module {detail.error.module!r}" if detail.error.module else ""
        console.print(
            f"[bold red]error:[/] {escape(f'{detail.error.code}{where}: {detail.error.message}')}",
            soft_wrap=True,
        )


def _render_attempts(detail: ExecutionDetail) -> None:
    """Every backend call, in order: which backend, how it ended and what the provider said."""
    if not detail.attempt_records:
        return
    # eight columns: no outer edge and one shared space between cells, to fit 80 columns
    table = Table(
        title="Attempts",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    table.add_column("module", no_wrap=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("backend", overflow="fold")
    table.add_column("outcome", no_wrap=True)
    table.add_column("code", overflow="fold")
    table.add_column("HTTP", justify="right", no_wrap=True)
    table.add_column("retry-after", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for attempt in detail.attempt_records:
        table.add_row(
            escape(attempt.module),
            str(attempt.attempt),
            escape(attempt.backend),
            status_markup(attempt.outcome),
            escape(attempt.error_code or "-"),
            "-" if attempt.status is None else str(attempt.status),
            "-" if attempt.retry_after is None else f"{attempt.retry_after:g} s",
            format_ms(_elapsed_ms(attempt.started_at, attempt.ended_at)),
        )
    console.print(table)


def _render_step_data(detail: ExecutionDetail) -> None:
    """What each step was given and answered, as recorded (sensitive fields redacted)."""
    recorded = [s for s in detail.steps if s.inputs is not None or s.outputs is not None]
    if not recorded:
        return
    table = Table(title="Step inputs and outputs", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("module", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    for step in recorded:
        first = True
        for side, values in (("in", step.inputs), ("out", step.outputs)):
            for key, value in (values or {}).items():
                table.add_row(
                    escape(step.module) if first else "",
                    side,
                    escape(key),
                    escape(format_value(value)),
                )
                first = False
    console.print(table)


def _render_messages(detail: ExecutionDetail) -> None:
    """The LM messages and raw response of each attempt that recorded them."""
    for attempt in detail.attempt_records:
        if attempt.messages is None and attempt.response is None:
            continue
        table = Table(
            title=f"LM exchange: {escape(attempt.module)} attempt {attempt.attempt}",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        table.add_column("role", no_wrap=True)
        table.add_column("content", overflow="fold")
        for message in attempt.messages or []:
            role = message.get("role", "?") if isinstance(message, dict) else "?"
            content = message.get("content", message) if isinstance(message, dict) else message
            table.add_row(escape(str(role)), escape(format_value(content)))
        if attempt.response is not None:
            table.add_row("[dim]response[/]", escape(format_value(attempt.response)))
        console.print(table)


def _elapsed_ms(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds() * 1000.0

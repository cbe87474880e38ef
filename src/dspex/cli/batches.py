"""``dspex batches``: the recorded batches, the command that resumes one, and cancelling one
wherever it runs.

A batch id can be given by any unique prefix of it (as ``git`` takes a short hash); a prefix
that fits several batches is an error listing them (exit 2). :func:`resume_command` is the one
place the ``dspex batch … --resume ID`` line is written, here and by ``dspex batch`` itself.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from dspex.cli._common import (
    WIDE_TERMINAL,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    console,
    format_time,
    format_usd,
    print_json,
    run_with_runtime,
    status_markup,
)
from dspex.cli._crash import resolve_subject

if TYPE_CHECKING:
    from pathlib import Path

    from dspex import BatchInfo, Runtime

__all__ = ["app", "config_args", "location_args", "resume_command"]

app = typer.Typer(help="List, inspect and cancel recorded batches.", no_args_is_help=True)


# batch config key → (the `dspex batch` option, its default there)
_OPTIONS: tuple[tuple[str, str, Any], ...] = (
    ("max_concurrency", "--concurrency", 32),
    ("max_retries", "--max-retries", 2),
    ("max_errors", "--max-errors", None),
    ("item_timeout", "--item-timeout", None),
    ("deadline", "--deadline", None),
    ("max_cost", "--max-cost", None),
    ("validate", "--validate", "upfront"),
    ("workers", "--workers", 1),
    ("cluster", "--cluster", None),
    ("backend", "--backend", None),
)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_args(config: Mapping[str, Any]) -> list[str]:
    """The ``dspex batch`` options that re-create a recorded batch config (defaults left out)."""
    args: list[str] = []
    for key, option, default in _OPTIONS:
        value = config.get(key, default)
        if value is not None and value != default:
            args += [option, _text(value)]
    return args


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def location_args(database_url: str | None, config: Path | None) -> list[str]:
    """``--database-url`` (password hidden) and ``--config`` as given, for a printed command."""
    args: list[str] = []
    if database_url is not None:
        args += ["--database-url", _hide_password(database_url)]
    if config is not None:
        args += ["--config", str(config)]
    return args


def resume_command(
    program: str,
    input_path: str | Path,
    batch_id: str,
    *,
    out: str | Path | None = None,
    options: Sequence[str] = (),
) -> str:
    """The shell command that re-runs what a batch did not complete: ``dspex batch PROGRAM
    INPUT --resume ID [--out OUT] [options…]``, quoted for a POSIX shell."""
    parts = ["dspex", "batch", program, str(input_path), "--resume", batch_id]
    if out is not None:
        parts += ["--out", str(out)]
    return shlex.join([*parts, *options])


def recorded_resume_command(info: BatchInfo, extra: Sequence[str] = ()) -> str | None:
    """The resume command of a recorded batch; ``None`` unless it read a JSONL file."""
    source = info.config.get("input") or {}
    if source.get("kind") != "jsonl" or not source.get("path"):
        return None
    options = [*config_args(info.config), *extra]
    return resume_command(
        info.program, source["path"], info.batch_id, out=info.config.get("out"), options=options
    )


def _finished(info: BatchInfo) -> bool:
    return info.status == "completed" and info.completed == info.total


@app.command("list")
def list_batches(
    program: Annotated[
        str | None, typer.Option("--program", "-p", help="only this program")
    ] = None,
    status: Annotated[
        str | None,
        typer.Option("--status", "-s", help="pending | running | completed | failed | cancelled"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="at most")] = 20,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """List batches, newest first, with their counts."""

    async def work(rt: Runtime) -> list[BatchInfo]:
        return await rt.list_batches(program=program, status=status, limit=limit)

    batches = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json({"items": [b.model_dump(mode="json") for b in batches]})
        return
    if not batches:
        console.print("no batches")
        return
    table = Table(title="Batches", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("program", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("done", justify="right", no_wrap=True)
    table.add_column("failed", justify="right", no_wrap=True)
    wide = console.width >= WIDE_TERMINAL
    if wide:
        table.add_column("created", no_wrap=True)
    for info in batches:
        done = info.completed + info.failed + info.cancelled
        created = [format_time(info.created_at)] if wide else []
        table.add_row(
            escape(info.batch_id),
            escape(f"{info.program} v{info.program_version}"),
            status_markup(info.status),
            f"{done}/{info.total}",
            str(info.failed),
            *created,
        )
    console.print(table)


@app.command("show")
def show(
    batch_id: Annotated[str, typer.Argument(help="the batch id, or a unique start of it")],
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Show one batch: status, counts, when it ran, its input and how to resume it."""

    async def work(rt: Runtime) -> BatchInfo:
        return await rt.get_batch(await resolve_subject(rt, batch_id, "batch"))

    info = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    command = None
    if not _finished(info):
        command = recorded_resume_command(info, location_args(database_url, config))
    if as_json:
        print_json({**info.model_dump(mode="json"), "resume_command": command})
        return
    _render(info, command)


@app.command("cancel")
def cancel(
    batch_id: Annotated[str, typer.Argument(help="the batch id, or a unique start of it")],
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Cancel a batch wherever it runs: the process driving it (a service replica, another
    `dspex batch`) stops it at its next lease renewal; one nobody runs is cancelled at once.
    Either way it can be resumed."""

    async def work(rt: Runtime) -> BatchInfo:
        return await rt.cancel_batch(await resolve_subject(rt, batch_id, "batch"))

    info = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    name = escape(info.batch_id)
    if info.status == "cancelled":
        console.print(f"batch {name}: {status_markup(info.status)}", soft_wrap=True)
    else:
        console.print(
            f"batch {name}: cancel requested; {escape(info.driver or 'its driver')} stops it"
            " when it next renews its lease",
            soft_wrap=True,
        )


def _render(info: BatchInfo, command: str | None) -> None:
    console.print(
        f"[bold]batch {escape(info.batch_id)}[/]: {status_markup(info.status)}", soft_wrap=True
    )
    console.print(
        f"  program: {escape(info.program)} v{info.program_version}  items: {info.total}  "
        f"completed: {info.completed}  failed: {info.failed}  cancelled: {info.cancelled}  "
        f"remaining: {info.remaining}",
        soft_wrap=True,
    )
    finished = "-" if info.finished_at is None else format_time(info.finished_at)
    console.print(
        f"  created: {format_time(info.created_at)}  finished: {finished}", soft_wrap=True
    )
    budget = info.config.get("max_cost")
    console.print(
        f"  cost: {format_usd(info.cost_usd)}"
        + (f" (max {format_usd(budget)} a run)" if budget else "")
        + f"  rate-limit waits: {info.rate_limited_s:.2f} s",
        soft_wrap=True,
    )
    source = info.config.get("input") or {}
    where = source.get("path") or f"a {source.get('kind', 'list')} (not a file)"
    out = info.config.get("out")
    console.print(
        f"  input: {escape(str(where))}" + (f"  out: {escape(str(out))}" if out else ""),
        soft_wrap=True,
    )
    bound = info.config.get("calls_bound")
    if isinstance(bound, dict) and bound:
        calls = ", ".join(f"{escape(str(name))} {count}" for name, count in bound.items())
        console.print(f"  backend calls per predictor call, at most: {calls}", soft_wrap=True)
    if _finished(info):
        return
    if command is None:
        console.print(
            "  resume: from Python, run_batch(…, resume=<id>) with the same items", soft_wrap=True
        )
    else:
        console.print(f"  resume: {escape(command)}", soft_wrap=True)

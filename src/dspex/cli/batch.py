"""``dspex batch PROGRAM INPUT.jsonl``: run a program over every line of a JSONL file.

Every line is one item (a JSON object of input fields); blank lines are skipped. Items are
checked before anything runs (every bad line is reported with its line number) unless
``--validate per_item``. A Rich progress bar shows done/failed, rate and ETA on a terminal (not
with ``--json``). ``--out`` (checked writable before anything runs) gets one line per item in
input order: index, status, and outputs or the error code and message.

``--max-cost USD`` stops the batch (resumable, stop reason ``max_cost``) once this run's items
spent that much, priced from ``[prices]`` over LiteLLM's cost map; ``--estimate`` prints the
expected tokens and cost (from recorded history, else the prompt-token estimate of each LM
module) and runs nothing. The statistics show the cost and the seconds items waited for
backends' ``rpm``/``tpm`` limits.

``--cluster ray`` runs the items on Ray actors (``pip install 'dspex[ray]'``): a Ray started
for the run on this machine, or the ``[cluster] address`` of the settings; ``--cluster auto``,
``ray://HOST:10001`` or ``HOST:PORT`` name a running cluster. ``--ray-actors`` and
``--ray-actor-cpus`` size the actors (default: ``[cluster] actors``/``actor_cpus``). Several
machines need PostgreSQL; SQLite is refused there, with why.

The batch id is printed on stderr as soon as the batch is recorded, with the command that
resumes it, so it is known even if the process is killed. Every way a batch can end early (an
error, ``--max-errors``, the deadline, Ctrl-C, SIGTERM, a crash) names the batch and the exact
resume command (``--out`` and the other options included); ``--json`` output carries both as
``batch_id`` and ``resume_command``. ``--resume`` takes a unique prefix of the id.

Exit codes: 0 every item completed, 1 some failed or the batch stopped (``--max-errors``,
``--fail-fast``, ``--max-cost``, the deadline), 2 a user mistake, 70 an internal error, 130
Ctrl-C, 143 SIGTERM. Ctrl-C and SIGTERM stop claiming items, cancel the running ones, record them
as cancelled (releasing their leases): nothing is left ``running``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dspex.cli._common import (
    EXIT_FAILED,
    AttemptTimeoutOption,
    BackendOption,
    CacheOption,
    CaptureMessagesOption,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    MaxAttemptsOption,
    RuntimeOptions,
    RunVersionOption,
    Terminated,
    cache_modes,
    check_choice,
    console,
    defaults_flags,
    err_console,
    error_payload,
    exit_code_for,
    fail,
    format_ms,
    format_usd,
    print_json,
    report_error,
    run_with_runtime,
    tune_for_program,
)
from dspex.cli._crash import note_subject
from dspex.cli.batches import location_args, resume_command
from dspex.errors import DspexError

if TYPE_CHECKING:
    from dspex import BatchEstimate, BatchResult, BatchStats, ProgressEvent, Runtime

__all__ = ["batch", "render_stats"]

# 128 + the signal number, as shells report a process ended by that signal
_EXIT_INTERRUPTED = 130
_EXIT_TERMINATED = 143


@dataclass(slots=True)
class _Resume:
    """The batch this command runs, once recorded, and the command that resumes it."""

    program: str
    input_file: Path
    out: Path | None
    options: list[str] = field(default_factory=list)
    batch_id: str | None = None

    def command(self, batch_id: str | None = None) -> str | None:
        batch_id = batch_id or self.batch_id
        if batch_id is None:
            return None
        return resume_command(
            self.program, self.input_file, batch_id, out=self.out, options=self.options
        )


class _Bar:
    """A Rich progress bar fed by progress events (a no-op when disabled)."""

    def __init__(self, enabled: bool) -> None:
        self.batch_id: str | None = None
        self._progress: Progress | None = None
        self._task: Any = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("failed {task.fields[failed]}"),
                TextColumn("{task.fields[rate]:.0f}/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[note]}"),
                console=err_console,
                transient=True,
            )

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        self.batch_id = event.batch_id
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task(
                "batch", total=event.total, failed=0, rate=0.0, completed=event.done, note=""
            )
        self._progress.update(
            self._task,
            completed=event.done,
            failed=event.failed,
            rate=event.rate,
            note=_held_note(event.held, event.held_expires_s),
        )


def _held_note(held: int, expires_s: float | None) -> str:
    if not held:
        return ""
    note = f"waiting for {held} items held by another worker"
    if expires_s is not None:
        note += f"; their lease expires in {expires_s:.0f}s"
    return note


def batch(
    program: Annotated[str, typer.Argument(help="the program name")],
    input_file: Annotated[
        Path, typer.Argument(metavar="INPUT.jsonl", help="one JSON object a line")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write one result line per item here")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="items running at once")
    ] = 32,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="re-runs of an item after a retryable error")
    ] = 2,
    max_errors: Annotated[
        int | None, typer.Option("--max-errors", min=0, help="stop once more items failed")
    ] = None,
    fail_fast: Annotated[
        bool, typer.Option("--fail-fast", help="stop at the first failed item")
    ] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", help="a batch id: re-run what did not complete")
    ] = None,
    workers: Annotated[
        str, typer.Option("--workers", "-w", help="worker processes, or 'auto' (CPU count)")
    ] = "1",
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="run on Ray: 'ray' ([cluster] address, default a local Ray), 'auto',"
            " 'ray://HOST:10001' or HOST:PORT",
        ),
    ] = None,
    ray_actors: Annotated[
        int | None, typer.Option("--ray-actors", min=1, help="Ray actors (default: by CPUs)")
    ] = None,
    ray_actor_cpus: Annotated[
        float | None,
        typer.Option("--ray-actor-cpus", min=0.01, help="CPUs Ray reserves for each actor"),
    ] = None,
    validate: Annotated[
        str, typer.Option("--validate", help="upfront (every item before running) | per_item")
    ] = "upfront",
    item_timeout: Annotated[
        float | None, typer.Option("--item-timeout", min=0.0, help="seconds per item run")
    ] = None,
    deadline: Annotated[
        float | None, typer.Option("--deadline", min=0.0, help="seconds for the whole batch")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option("--max-cost", min=0.0, help="stop once this run spent this many US dollars"),
    ] = None,
    estimate: Annotated[
        bool,
        typer.Option("--estimate", help="print the expected tokens and cost, and run nothing"),
    ] = False,
    version: RunVersionOption = None,
    backend: BackendOption = None,
    attempt_timeout: AttemptTimeoutOption = None,
    max_attempts: MaxAttemptsOption = None,
    cache: CacheOption = None,
    capture_messages: CaptureMessagesOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Run a program over a JSONL file as one recorded, resumable batch."""
    if validate not in ("upfront", "per_item"):
        fail(
            "bad_arguments",
            f"--validate must be upfront or per_item, got {validate!r}",
            as_json=as_json,
        )
    check_choice(cache, cache_modes(), "cache", as_json=as_json)
    if not input_file.is_file():
        fail("bad_arguments", f"input file not found: {str(input_file)!r}", as_json=as_json)
    if estimate:
        _estimate(program, input_file, version, backend, database_url, config, as_json=as_json)
        return
    worker_count: int | str = workers if workers == "auto" else _int(workers, as_json)
    # This process handles SIGTERM itself (running items recorded cancelled, exit 143); Ray's
    # crash handler, which a driver otherwise installs on the first batch on a cluster, would
    # abort it instead. The process is dspex's own, so it may choose (read by Ray only).
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    bar = _Bar(enabled=not as_json and err_console.is_terminal)
    terminated = Terminated()
    state = _Resume(program, input_file, out)
    state.options = [
        *_given_options(
            concurrency=concurrency,
            max_retries=max_retries,
            max_errors=max_errors,
            fail_fast=fail_fast,
            workers=workers,
            validate=validate,
            item_timeout=item_timeout,
            deadline=deadline,
            max_cost=max_cost,
            backend=backend,
            attempt_timeout=attempt_timeout,
            max_attempts=max_attempts,
            cache=cache,
            capture_messages=capture_messages,
            cluster=cluster,
            ray_actors=ray_actors,
            ray_actor_cpus=ray_actor_cpus,
        ),
        *location_args(database_url, config),
    ]

    def started(batch_id: str) -> None:
        state.batch_id = batch_id
        command = state.command()
        note_subject("batch", batch_id, resume=command)
        how = "resumed" if resume is not None else "started"
        err_console.print(
            f"batch {batch_id} {how}; if it stops early, resume it with: {command}",
            markup=False,
            soft_wrap=True,
        )

    async def go() -> BatchResult:
        import dspex

        options = dspex.BatchOptions.of(
            max_concurrency=concurrency,
            max_retries=max_retries,
            continue_on_error=not fail_fast,
            max_errors=max_errors,
            item_timeout=item_timeout,
            deadline=deadline,
            max_cost=max_cost,
            validate=validate,
            workers=worker_count,
            cache=cache,
            cluster=cluster,
            ray_actors=ray_actors,
            ray_actor_cpus=ray_actor_cpus,
        )
        settings = None
        flags = defaults_flags(attempt_timeout, max_attempts, capture_messages)
        if flags:  # the worker processes get these settings too
            from dspex.config import load_settings

            settings = load_settings(config, flags=flags)
        async with dspex.Runtime.open(database_url, config=config, settings=settings) as rt:
            resume_id = None if resume is None else await rt.resolve_id(resume, kind="batch")
            await tune_for_program(rt, program, version, backend)
            with terminated.cancels_current_task():
                return await rt.run_batch(
                    program,
                    input_file,
                    version=version,
                    backend=backend,
                    options=options,
                    resume=resume_id,
                    on_progress=bar,
                    out=out,
                    on_start=started,
                )

    try:
        with bar:
            result = asyncio.run(go())
    except DspexError as exc:
        _failed(exc, state, as_json=as_json)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        _stopped("interrupted", state)
        raise typer.Exit(_EXIT_INTERRUPTED) from None
    except asyncio.CancelledError:
        if not terminated.received:
            raise
        _stopped("terminated", state)
        raise typer.Exit(_EXIT_TERMINATED) from None
    command = None if result.ok else state.command(result.batch_id)
    if as_json:
        print_json(
            {**result.model_dump(mode="json", exclude={"results"}), "resume_command": command}
        )
    else:
        render_result(result, resume=command)
    if not result.ok:
        raise typer.Exit(EXIT_FAILED)


def _given_options(
    *,
    concurrency: int,
    max_retries: int,
    max_errors: int | None,
    fail_fast: bool,
    workers: str,
    validate: str,
    item_timeout: float | None,
    deadline: float | None,
    max_cost: float | None,
    backend: str | None,
    attempt_timeout: float | None = None,
    max_attempts: int | None = None,
    cache: str | None = None,
    capture_messages: bool | None = None,
    cluster: str | None = None,
    ray_actors: int | None = None,
    ray_actor_cpus: float | None = None,
) -> list[str]:
    """The options of this run that differ from the defaults, as they were given."""
    import dspex

    default = dspex.BatchOptions()
    args: list[str] = []
    if concurrency != default.max_concurrency:
        args += ["--concurrency", str(concurrency)]
    if max_retries != default.max_retries:
        args += ["--max-retries", str(max_retries)]
    if max_errors is not None:
        args += ["--max-errors", str(max_errors)]
    if fail_fast:
        args.append("--fail-fast")
    if workers != "1":
        args += ["--workers", workers]
    if validate != default.validate_mode:
        args += ["--validate", validate]
    for option, seconds in (("--item-timeout", item_timeout), ("--deadline", deadline)):
        if seconds is not None:
            args += [option, f"{seconds:g}"]
    if max_cost is not None:
        args += ["--max-cost", f"{max_cost:g}"]
    if backend is not None:
        args += ["--backend", backend]
    if attempt_timeout is not None:
        args += ["--attempt-timeout", f"{attempt_timeout:g}"]
    if max_attempts is not None:
        args += ["--max-attempts", str(max_attempts)]
    if cache is not None:
        args += ["--cache", cache]
    if capture_messages is not None:
        args.append("--capture-messages" if capture_messages else "--no-capture-messages")
    if cluster is not None:
        args += ["--cluster", cluster]
    if ray_actors is not None:
        args += ["--ray-actors", str(ray_actors)]
    if ray_actor_cpus is not None:
        args += ["--ray-actor-cpus", f"{ray_actor_cpus:g}"]
    return args


def _estimate(
    program: str,
    input_file: Path,
    version: int | None,
    backend: str | None,
    database_url: str | None,
    config: Path | None,
    *,
    as_json: bool,
) -> None:
    """``--estimate``: the expected tokens and cost of the batch; nothing runs."""

    async def work(rt: Runtime) -> BatchEstimate:
        return await rt.estimate_batch(program, input_file, version=version, backend=backend)

    found = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(found.model_dump(mode="json"))
        return
    table = Table(title=f"Estimate: {escape(found.program)} v{found.program_version}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    how = (
        f"history ({found.history_runs} recorded runs)"
        if found.source == "history"
        else "prompt-token estimate"
    )
    rows = [("items", str(found.items)), ("from", how)]
    for model, counts in found.tokens_per_item.items():
        rows.append((f"tokens per item ({model})", str(counts["total_tokens"])))
    rows += [
        ("tokens", str(found.tokens)),
        ("cost per item", format_usd(found.cost_per_item_usd)),
        ("cost", format_usd(found.cost_usd)),
    ]
    if found.unpriced_models:
        rows.append(("no price for", ", ".join(found.unpriced_models)))
    for metric, value in rows:
        table.add_row(escape(metric), escape(value))
    console.print(table)


def _failed(exc: DspexError, state: _Resume, *, as_json: bool) -> None:
    """Report an error; once the batch was recorded, name it and how to resume it."""
    batch_id = getattr(exc, "batch_id", None) or state.batch_id
    command = state.command(batch_id)
    if as_json:
        errors = [e.to_dict() for e in getattr(exc, "errors", None) or []]
        payload = error_payload(exc.code, exc.message, errors)
        payload["error"].update({"batch_id": batch_id, "resume_command": command})
        print_json(payload)
        return
    report_error(exc, as_json=False)
    if batch_id is not None:
        err_console.print(
            f"batch {batch_id} stopped early; resume it with: {command}",
            markup=False,
            soft_wrap=True,
        )


def _stopped(how: str, state: _Resume) -> None:
    command = state.command()
    where = f" resume it with: {escape(command)}" if command else ""
    err_console.print(
        f"[bold yellow]{how}:[/] running items were recorded as cancelled;{where}",
        markup=True,
        soft_wrap=True,
    )


def _int(text: str, as_json: bool) -> int:
    try:
        value = int(text)
    except ValueError:
        fail(
            "bad_arguments", f"--workers must be a number or 'auto', got {text!r}", as_json=as_json
        )
    if value < 1:
        fail("bad_arguments", "--workers must be at least 1", as_json=as_json)
    return value


def render_stats(stats: BatchStats, *, title: str = "Statistics") -> Table:
    """The statistics as a two-column table."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    rate = "-" if stats.success_rate is None else f"{stats.success_rate:.1%}"
    rows = [
        ("items", str(stats.total)),
        ("completed", str(stats.completed)),
        ("failed", str(stats.failed)),
        ("cancelled", str(stats.cancelled)),
        ("skipped (already done)", str(stats.skipped)),
        ("success rate", rate),
        ("latency p50", format_ms(stats.p50_ms)),
        ("latency p95", format_ms(stats.p95_ms)),
        ("latency max", format_ms(stats.max_ms)),
        ("throughput", f"{stats.throughput:.1f} items/s"),
        ("wall time", f"{stats.wall_s:.2f} s"),
        ("item retries", str(stats.retries)),
        ("cost", format_usd(stats.cost_usd)),
        ("rate-limit waits", f"{stats.rate_limited_s:.2f} s"),
    ]
    for model, counts in sorted(stats.tokens.items()):
        rows.append((f"tokens ({model})", str(counts.get("total_tokens", 0))))
    for code, count in stats.errors.items():
        rows.append((f"failed: {code}", str(count)))
    for metric, value in rows:
        table.add_row(metric, value)
    return table


def render_result(result: BatchResult, *, resume: str | None = None) -> None:
    """The human summary of a batch run (``resume``: the command that re-runs what did not
    complete, printed when the batch is not all completed)."""
    console.print(render_stats(result.stats))
    colour = "green" if result.ok else ("yellow" if result.status == "completed" else "red")
    console.print(
        f"batch: {escape(result.batch_id)}  status: [{colour}]{escape(result.status)}[/]"
        f"  program: {escape(result.program)} v{result.program_version}",
        soft_wrap=True,
    )
    if result.out:
        console.print(f"results: {escape(result.out)}", soft_wrap=True)
    if not result.ok:
        command = resume or f"--resume {result.batch_id}"
        console.print(f"re-run what did not complete with: {command}", markup=False, soft_wrap=True)

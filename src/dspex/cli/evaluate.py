"""``dspex evaluate PROGRAM DEVSET.jsonl --metric METRIC``: measure a version on a devset.

Each devset line holds the program's input fields plus its labels (expected values of output
fields). The inputs run as one recorded, resumable batch (the batch runner: retries, workers,
progress); then every item is scored with the metric and the evaluation is recorded with its
mean score. ``--compare A B`` evaluates two versions on the same items and prints both scores,
the difference and its paired bootstrap 95% interval.

The batch id is printed on stderr as soon as the batch is recorded, with the command that
resumes an interrupted evaluation (``--resume BATCH_ID``). Exit codes: 0 the evaluation
completed, 1 it stopped before every item ran (resume it), 2 a user mistake (unknown program or
metric, a devset that does not fit the program).
"""

from __future__ import annotations

import asyncio
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dspex.cli._common import (
    EXIT_FAILED,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RunVersionOption,
    Terminated,
    cache_modes,
    check_choice,
    console,
    err_console,
    escape,
    exit_code_for,
    fail,
    print_json,
    report_error,
    tune_for_program,
)
from dspex.cli._crash import note_subject
from dspex.cli.batches import location_args
from dspex.errors import DspexError

if TYPE_CHECKING:
    from dspex import ComparisonResult, EvaluationResult

__all__ = ["evaluate", "render_evaluation"]

_EXIT_INTERRUPTED = 130
_EXIT_TERMINATED = 143


def evaluate(
    program: Annotated[str, typer.Argument(help="the program name")],
    devset: Annotated[
        Path,
        typer.Argument(metavar="DEVSET.jsonl", help="inputs and expected outputs, one a line"),
    ],
    metric: Annotated[
        str,
        typer.Option(
            "--metric",
            "-m",
            help="exact_match | f1 | contains | answer_exact_match | pkg.mod:function",
        ),
    ],
    compare: Annotated[
        tuple[int, int] | None,
        typer.Option("--compare", metavar="A B", help="evaluate two versions and compare them"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write one scored line per item here")
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="items running at once")
    ] = 32,
    max_retries: Annotated[
        int, typer.Option("--max-retries", min=0, help="re-runs of an item after a retryable error")
    ] = 2,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="worker processes")] = 1,
    resume: Annotated[
        str | None,
        typer.Option("--resume", help="the batch id of an interrupted evaluation"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="the bootstrap's seed (--compare)")] = 0,
    version: RunVersionOption = None,
    cache: Annotated[
        str | None,
        typer.Option(
            "--cache",
            help="the response cache for this evaluation: off | read_only | read_write "
            "(default: the modules' and backends' own, else read_write)",
        ),
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Score a program version on a devset: a recorded, resumable batch with a metric."""
    check_choice(cache, cache_modes(), "cache", as_json=as_json)
    if not devset.is_file():
        fail("bad_arguments", f"devset not found: {str(devset)!r}", as_json=as_json)
    if compare is not None and (version is not None or resume is not None or out is not None):
        fail(
            "bad_arguments",
            "--compare takes its two versions itself: not with --version, --resume or --out",
            as_json=as_json,
        )
    base = ["dspex", "evaluate", program, str(devset), "--metric", metric]
    extra = [*location_args(database_url, config)]
    if concurrency != 32:
        extra += ["--concurrency", str(concurrency)]
    if workers != 1:
        extra += ["--workers", str(workers)]
    if cache is not None:
        extra += ["--cache", cache]
    state: dict[str, str] = {}

    def started(batch_id: str) -> None:
        command = shlex.join([*base, "--resume", batch_id, *extra])
        state["batch_id"], state["command"] = batch_id, command
        note_subject("batch", batch_id, resume=command)
        err_console.print(
            f"evaluation batch {batch_id} started; if it stops early, resume it with: {command}",
            markup=False,
            soft_wrap=True,
        )

    terminated = Terminated()

    async def go() -> EvaluationResult | ComparisonResult:
        import dspex

        options = dspex.BatchOptions.of(
            max_concurrency=concurrency, max_retries=max_retries, workers=workers, cache=cache
        )
        async with dspex.Runtime.open(database_url, config=config) as rt:
            for each in compare or (version,):
                await tune_for_program(rt, program, each, None)
            with terminated.cancels_current_task():
                if compare is not None:
                    return await rt.compare(
                        program, devset, metric=metric, versions=compare, seed=seed, options=options
                    )
                resume_id = None if resume is None else await rt.resolve_id(resume, kind="batch")
                return await rt.evaluate(
                    program,
                    devset,
                    metric=metric,
                    version=version,
                    options=options,
                    resume=resume_id,
                    out=out,
                    on_start=started,
                )

    try:
        result = asyncio.run(go())
    except DspexError as exc:
        report_error(exc, as_json=as_json)
        if "command" in state and not as_json:
            err_console.print(f"resume it with: {state['command']}", markup=False, soft_wrap=True)
        raise typer.Exit(exit_code_for(exc)) from None
    except KeyboardInterrupt:
        _stopped("interrupted", state)
        raise typer.Exit(_EXIT_INTERRUPTED) from None
    except asyncio.CancelledError:
        if not terminated.received:
            raise
        _stopped("terminated", state)
        raise typer.Exit(_EXIT_TERMINATED) from None
    from dspex import ComparisonResult

    if isinstance(result, ComparisonResult):
        if as_json:
            print_json(result.model_dump(mode="json", exclude={"a": {"stats"}, "b": {"stats"}}))
        else:
            _render_comparison(result)
        return
    command = state.get("command") if result.status != "completed" else None
    if as_json:
        print_json({**result.model_dump(mode="json"), "resume_command": command})
    else:
        render_evaluation(result)
        if command:
            console.print(f"resume it with: {command}", markup=False, soft_wrap=True)
    if result.status != "completed":
        raise typer.Exit(EXIT_FAILED)


def _stopped(how: str, state: dict[str, str]) -> None:
    where = f" resume it with: {state['command']}" if "command" in state else ""
    err_console.print(f"{how}: the evaluation stopped;{where}", markup=False, soft_wrap=True)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_evaluation(result: EvaluationResult) -> None:
    """The human summary of one evaluation."""
    table = Table(title=f"Evaluation of {result.program} v{result.version}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("metric", result.metric),
        ("score", _score(result.score)),
        ("items", str(result.n)),
        ("failed", "-" if result.failed is None else str(result.failed)),
        ("status", result.status),
        ("batch", result.batch_id or "-"),
        ("evaluation", result.evaluation_id),
    ]
    if result.stats is not None:
        rows.append(("throughput", f"{result.stats.throughput:.1f} items/s"))
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(table)
    if result.out:
        console.print(f"scored items: {escape(result.out)}", soft_wrap=True)


def _render_comparison(result: ComparisonResult) -> None:
    table = Table(title=f"{result.program}: {result.metric} on {result.n} items")
    table.add_column("version", justify="right")
    table.add_column("score", justify="right")
    table.add_column("failed", justify="right")
    table.add_column("batch")
    for side in (result.a, result.b):
        table.add_row(
            f"v{side.version}", _score(side.score), str(side.failed), escape(side.batch_id or "-")
        )
    console.print(table)
    low, high = result.interval
    console.print(
        f"difference v{result.b.version} - v{result.a.version}: {result.difference:+.4f}"
        f" (paired bootstrap 95% interval {low:+.4f} to {high:+.4f},"
        f" {result.resamples} resamples, seed {result.seed})"
    )

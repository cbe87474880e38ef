"""``dspex optimize`` and ``dspex optimizations``: run a DSPy optimizer over a program, and the
recorded runs.

DSPy's optimizers report progress with ``print`` and progress bars; while one runs, this command
(which owns its process) sends standard output to standard error, so ``--json`` output on stdout
is one JSON document.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from dspex.cli._common import (
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    RunVersionOption,
    console,
    escape,
    fail,
    format_time,
    print_json,
    run_with_runtime,
    status_markup,
)

if TYPE_CHECKING:
    from dspex import OptimizationInfo, Runtime

__all__ = ["app", "optimize"]

app = typer.Typer(help="List and inspect recorded optimization runs.", no_args_is_help=True)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def optimize(
    program: Annotated[
        str | None, typer.Argument(help="the program name (optional with --resume)")
    ] = None,
    trainset: Annotated[
        Path | None,
        typer.Argument(help="JSONL examples: the program's inputs plus expected outputs"),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="exact_match, f1, contains, answer_exact_match, or an allow-listed"
            " pkg.mod:function",
        ),
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(
            "--optimizer",
            help="bootstrap_few_shot (default), bootstrap_random_search, mipro_v2 or gepa",
        ),
    ] = None,
    valset: Annotated[
        Path | None,
        typer.Option("--valset", help="JSONL examples to score on (default: the trainset)"),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="the optimizer's seed")] = None,
    max_demos: Annotated[
        int | None, typer.Option("--max-demos", min=0, help="demos per predictor, at most (4)")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="go on with a failed or interrupted run (or one whose process died), with the"
            " data sets, settings and seed it started with",
        ),
    ] = None,
    version: RunVersionOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Optimize a program with a DSPy optimizer; the result is a new draft version.

    Every LM call goes through the program's backends and the run is recorded (dspex
    optimizations show ID). Extra needs (MIPROv2's prompt model, GEPA's reflection LM, budgets)
    come from [optimize] in dspex.toml. An interrupted run goes on with --resume ID: its
    baseline and scored bootstrap_random_search candidates are reused; the other optimizers
    compile again with the same seed.
    """
    if resume is None and (program is None or trainset is None or metric is None):
        fail("usage", "give PROGRAM, TRAINSET and --metric (or --resume ID)", as_json=as_json)

    async def work(rt: Runtime) -> OptimizationInfo:
        with contextlib.redirect_stdout(sys.stderr):
            return await rt.optimize(
                program,
                trainset,
                metric=metric,
                optimizer=optimizer,
                version=version,
                valset=valset,
                seed=seed,
                max_demos=max_demos,
                resume=resume,
            )

    info = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    console.print(
        f"optimized [bold]{escape(info.program)}[/] v{info.parent_version} → v{info.version}"
        f" with {escape(info.optimizer)}: {escape(info.metric)}"
        f" {_score(info.baseline_score)} → {_score(info.score)}"
        f" on {info.valset_size} examples",
        soft_wrap=True,
    )
    console.print(
        f"  optimization {escape(info.optimization_id)}: {_stats_line(info)}", soft_wrap=True
    )
    console.print(
        f"  v{info.version} is a draft: review it with dspex program show"
        f" {escape(info.program)} --version {info.version}",
        soft_wrap=True,
    )


def _stats_line(info: OptimizationInfo) -> str:
    stats = info.stats
    tokens = sum(u.get("total_tokens", 0) for u in (stats.get("usage") or {}).values())
    return (
        f"{stats.get('program_calls', 0)} program runs ({stats.get('failed_calls', 0)} failed),"
        f" {stats.get('lm_calls', 0)} LM calls, {tokens} tokens"
    )


@app.command("list")
def list_runs(
    program: Annotated[
        str | None, typer.Option("--program", "-p", help="only this program's runs")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="at most this many")] = 20,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """List optimization runs, newest first."""

    async def work(rt: Runtime) -> list[OptimizationInfo]:
        return await rt.list_optimizations(program=program, limit=limit)

    runs = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json([run.model_dump(mode="json") for run in runs])
        return
    if not runs:
        console.print("no optimization runs recorded (dspex optimize PROGRAM TRAINSET.jsonl)")
        return
    table = Table(title="Optimization runs")
    table.add_column("id", overflow="fold")
    table.add_column("program", overflow="fold")
    table.add_column("from → to")
    table.add_column("optimizer")
    table.add_column("status")
    table.add_column("baseline", justify="right")
    table.add_column("score", justify="right")
    table.add_column("created")
    for run in runs:
        table.add_row(
            escape(run.optimization_id),
            escape(run.program),
            f"v{run.parent_version} → " + (f"v{run.version}" if run.version else "-"),
            escape(run.optimizer),
            status_markup(run.status.value),
            _score(run.baseline_score),
            _score(run.score),
            format_time(run.created_at),
        )
    console.print(table)


@app.command("show")
def show(
    optimization_id: Annotated[str, typer.Argument(help="the optimization run's id")],
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Show an optimization run: lineage, scores, trials and what it cost."""

    async def work(rt: Runtime) -> OptimizationInfo:
        return await rt.get_optimization(optimization_id)

    run = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(run.model_dump(mode="json"))
        return
    console.print(
        f"[bold]optimization {escape(run.optimization_id)}[/]: {status_markup(run.status.value)}"
    )
    to = f"v{run.version}" if run.version else "-"
    console.print(f"  program: {escape(run.program)} v{run.parent_version} → {to}")
    console.print(f"  optimizer: {escape(run.optimizer)} {escape(run.settings)}", soft_wrap=True)
    console.print(
        f"  metric: {escape(run.metric)}, baseline {_score(run.baseline_score)},"
        f" score {_score(run.score)}"
    )
    console.print(
        f"  trainset: {run.trainset_size} examples, sha256 {escape(run.trainset_hash[:16])}…;"
        f" scored on {run.valset_size} {'valset' if run.valset_hash else 'trainset'} examples;"
        f" seed {run.seed if run.seed is not None else '-'}",
        soft_wrap=True,
    )
    console.print(f"  cost: {_stats_line(run)}", soft_wrap=True)
    if run.attempts > 1 or run.worker_id:
        console.print(
            f"  attempts: {run.attempts}, last by {escape(run.worker_id or '-')}", soft_wrap=True
        )
    if run.error:
        console.print(f"  [red]error:[/] {escape(run.error)}", soft_wrap=True)
    if run.resumable:
        console.print(
            f"  resume it with: dspex optimize --resume {escape(run.optimization_id)}",
            soft_wrap=True,
        )
    if run.trials:
        table = Table(title="Trials")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("detail", overflow="fold")
        for trial in run.trials:
            table.add_row(str(trial.number), _score(trial.score), escape(trial.detail))
        console.print(table)

"""``dspex program``: register, import, list, show, initialize and archive programs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dspex.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    USER_MISTAKES,
    ConfigOption,
    DatabaseUrlOption,
    JsonOption,
    RuntimeOptions,
    RunVersionOption,
    VersionOption,
    console,
    err_console,
    escape,
    fail,
    format_ms,
    format_time,
    handle_errors,
    print_json,
    run_with_runtime,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from dspex import (
        EvaluationResult,
        GraphInfo,
        Program,
        ProgramInfo,
        PromotionResult,
        Runtime,
        TuneProposal,
    )

__all__ = ["app"]

app = typer.Typer(
    help="Register, list, show, initialize and archive programs.", no_args_is_help=True
)


_STATUS_STYLE = {
    "ready": "green",
    "error": "red",
    "draft": "yellow",
    "initializing": "cyan",
    "archived": "dim",
}


def _status(status: str) -> str:
    style = _STATUS_STYLE.get(status, "white")
    return f"[{style}]{escape(status)}[/]"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _info_line(info: ProgramInfo) -> str:
    return f"{escape(info.name)} v{info.version}: {_status(info.status)}"


@app.command("register")
def register(
    file: Annotated[Path, typer.Argument(help="the program spec (YAML or JSON)")],
    init: Annotated[bool, typer.Option("--init", help="also initialize it")] = False,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Register a program from its spec file (a changed spec becomes a new version)."""
    import dspex

    with handle_errors(as_json=as_json):
        # the spec is checked before the database is touched
        program = dspex.Program.from_file(file)

    info = run_with_runtime(
        RuntimeOptions(database_url, config, as_json), _register_work(program, init=init)
    )
    _report_info(info, f"registered {_info_line(info)}", as_json=as_json)


def _register_work(program: Program, *, init: bool) -> Callable[[Runtime], Awaitable[ProgramInfo]]:
    """The work of ``register`` and ``import``: register the program, then initialize it
    when asked."""

    async def work(rt: Runtime) -> ProgramInfo:
        info = await rt.register(program)
        if init:
            info = await rt.initialize(info.name, info.version)
        return info

    return work


def _report_info(info: ProgramInfo, line: str, *, as_json: bool) -> None:
    """Print a program's state after a command changed it (JSON or ``line``), then exit by
    its status."""
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        console.print(line, soft_wrap=True)
    _exit_for_status(info)


@app.command("import")
def import_dspy(
    ref: Annotated[str, typer.Argument(help="the DSPy module class, as pkg.mod:Class")],
    name: Annotated[str, typer.Option("--name", help="the program name")],
    state: Annotated[
        Path | None,
        typer.Option("--state", help="its optimized state: the .json file Module.save() wrote"),
    ] = None,
    init_json: Annotated[
        str | None,
        typer.Option("--init-json", help="constructor keyword arguments, as a JSON object"),
    ] = None,
    signature: Annotated[
        str | None,
        typer.Option(
            "--signature",
            help="the program signature (derived when the module has one predictor)",
        ),
    ] = None,
    init: Annotated[bool, typer.Option("--init", help="also initialize it")] = False,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Register a program around a DSPy module class you already have (its state inline).

    The class must be importable (installed, or on PYTHONPATH) and under allowed_imports.
    """
    import json

    import dspex
    from dspex.config import load_settings

    init_args: dict[str, Any] | None = None
    if init_json is not None:
        try:
            init_args = json.loads(init_json)
        except json.JSONDecodeError as exc:
            fail("bad_arguments", f"--init-json is not JSON: {exc}", as_json=as_json)
        if not isinstance(init_args, dict):
            fail("bad_arguments", "--init-json must be a JSON object of arguments", as_json=as_json)
    with handle_errors(as_json=as_json):
        # the allow-list is checked, and the module built with its state, before the database
        # is touched
        settings = load_settings(config)
        program = dspex.Program.from_dspy(
            ref,
            name=name,
            signature=signature,
            init=init_args,
            state=state,
            allowed_imports=settings.allowed_imports,
        )

    info = run_with_runtime(
        RuntimeOptions(database_url, config, as_json), _register_work(program, init=init)
    )
    _report_info(info, f"imported {escape(ref)} as {_info_line(info)}", as_json=as_json)


def _exit_for_status(info: ProgramInfo) -> None:
    """Exit 0 unless initialization ended in ``error``: then 2 when the spec or configuration
    is at fault (a disallowed import, a missing corpus, an unknown backend), else 1."""
    if info.status == "error":
        # the reason goes to stderr in both modes: with --json stdout holds the info
        err_console.print(
            f"[bold red]error:[/] program {escape(repr(info.name))} v{info.version} failed to "
            f"initialize: {escape(info.error or 'unknown reason')}",
            markup=True,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_USAGE if _is_user_mistake(info.error) else EXIT_FAILED)
    raise typer.Exit(EXIT_OK)


def _is_user_mistake(reason: str | None) -> bool:
    """Whether an initialization error (stored as ``"<code>: <message>"``) is a user mistake."""
    code = (reason or "").partition(":")[0].strip()
    return code in _mistake_codes()


def _mistake_codes() -> set[str]:
    """The ``code`` of every error class that is a user mistake, subclasses included."""
    codes: set[str] = set()
    pending: list[type[Exception]] = list(USER_MISTAKES)
    while pending:
        cls = pending.pop()
        code = getattr(cls, "code", None)
        if isinstance(code, str):
            codes.add(code)
        pending.extend(cls.__subclasses__())
    return codes


@app.command("list")
def list_programs(
    all_versions: Annotated[
        bool, typer.Option("--all-versions", help="every version, not just the latest")
    ] = False,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """List programs with their status and execution statistics."""

    async def work(rt: Runtime) -> list[ProgramInfo]:
        return await rt.list_programs(all_versions=all_versions)

    infos = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json([info.model_dump(mode="json") for info in infos])
        return
    if not infos:
        console.print("no programs registered (dspex program register FILE)")
        return
    table = Table(title="Programs")
    table.add_column("name", overflow="fold")
    table.add_column("version", justify="right")
    table.add_column("current")
    table.add_column("status")
    table.add_column("executions", justify="right")
    table.add_column("success rate", justify="right")
    table.add_column("mean", justify="right")
    for info in infos:
        table.add_row(
            escape(info.name),
            str(info.version),
            "[green]✓[/]" if info.current else "",
            _status(info.status),
            str(info.execution_count),
            _rate(info.success_rate),
            format_ms(info.mean_duration_ms),
        )
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="the program name")],
    version: VersionOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Show a program: status, statistics, signature, modules and plan."""

    async def work(rt: Runtime) -> _Shown:
        info = await rt.get_program(name, version)
        program = await rt.load_program(name, info.version)
        graph = await rt.graph(name, info.version)
        current = await rt.current_version(name)
        evaluations = await rt.list_evaluations(name, version=info.version, limit=10)
        promotions = await rt.list_promotions(name, limit=5)
        return _Shown(info, program, graph, current, evaluations, promotions)

    shown = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(
            {
                "program": shown.info.model_dump(mode="json"),
                "current_version": shown.current,
                "spec": shown.program.to_dict(),
                "plan": shown.graph.plan,
                "evaluations": [
                    e.model_dump(mode="json", exclude={"stats"}) for e in shown.evaluations
                ],
                "promotions": [p.model_dump(mode="json") for p in shown.promotions],
            }
        )
        return
    _render_show(shown.info, shown.program, shown.graph)
    _render_versions(shown)


@dataclass(frozen=True, slots=True)
class _Shown:
    info: ProgramInfo
    program: Program
    graph: GraphInfo
    current: int
    evaluations: list[EvaluationResult]
    promotions: list[PromotionResult]


def _render_versions(shown: _Shown) -> None:
    """The current version, this version's recorded scores and the recent promotions."""
    console.print(f"Current version: v{shown.current}")
    if shown.evaluations:
        table = Table(title=f"Scores of v{shown.info.version}")
        table.add_column("metric")
        table.add_column("score", justify="right")
        table.add_column("items", justify="right")
        table.add_column("failed", justify="right")
        table.add_column("devset", overflow="fold")
        for e in shown.evaluations:
            table.add_row(
                escape(e.metric),
                "-" if e.score is None else f"{e.score:.4f}",
                str(e.n),
                "-" if e.failed is None else str(e.failed),
                escape(e.devset_hash[:12]),
            )
        console.print(table)
    for p in shown.promotions:
        how = "forced" if p.forced else "gated"
        scores = ""
        if p.score is not None:
            before = "-" if p.previous_score is None else f"{p.previous_score:.4f}"
            scores = f", {p.metric} {p.score:.4f} vs {before}"
        console.print(
            f"  promoted v{p.version} ({_from(p.previous_version)}) by"
            f" {escape(p.promoted_by)} at {format_time(p.created_at)}, {how}{escape(scores)}",
            soft_wrap=True,
        )


def _render_show(info: ProgramInfo, program: Program, graph: GraphInfo) -> None:
    console.print(f"[bold]{escape(info.name)}[/] v{info.version}: {_status(info.status)}")
    if info.error:
        console.print(f"  reason: {escape(info.error)}", soft_wrap=True)
    console.print(f"  signature: {escape(info.signature)}", soft_wrap=True)
    console.print(
        f"  executions: {info.execution_count} ({info.success_count} ok, "
        f"{info.failure_count} failed), success rate {_rate(info.success_rate)}, "
        f"mean {format_ms(info.mean_duration_ms)}"
    )
    table = Table(title="Modules")
    table.add_column("module")
    table.add_column("kind")
    table.add_column("backend")
    table.add_column("depends on", overflow="fold")
    table.add_column("signature", overflow="fold")
    for module in graph.modules:
        table.add_row(
            escape(module.name),
            escape(module.kind),
            escape(module.backend or "-"),
            escape(", ".join(module.depends_on) or "-"),
            escape(program.module_signature(module.name)),
        )
    console.print(table)
    for module in graph.modules:
        learned = _learned(program.modules[module.name])
        if learned:
            console.print(f"  {escape(module.name)} carries {escape(learned)}", soft_wrap=True)
    _render_plan_summary(graph.plan)


def _learned(spec: Any) -> str:
    """What a version carries from optimization: demos, instructions, a module's saved state."""
    parts: list[str] = []
    if spec.instructions:
        parts.append("instructions")
    if spec.demos:
        parts.append(f"{len(spec.demos)} demos")
    if isinstance(spec.state, str):
        parts.append(f"state from {spec.state}")
    elif isinstance(spec.state, Mapping):
        predictors = {k: v for k, v in spec.state.items() if k != "metadata"}
        demos = sum(len(v.get("demos") or ()) for v in predictors.values())
        parts.append(f"a saved state ({len(predictors)} predictors, {demos} demos)")
    return ", ".join(parts)


def _render_plan_summary(plan: dict[str, Any]) -> None:
    levels = plan.get("levels", [])
    critical = plan.get("critical_path", [])
    console.print(
        f"Plan: {len(levels)} levels, width {escape(plan.get('width', '-'))}, "
        f"critical path {escape(' → '.join(critical) or '-')}, "
        f"estimated makespan {format_ms(plan.get('estimated_makespan'))}",
        soft_wrap=True,
    )


@app.command("init")
def init(
    name: Annotated[str, typer.Argument(help="the program name")],
    version: VersionOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Initialize a program so it can run; exit 1 (with the reason) if it ends in ``error``."""

    async def work(rt: Runtime) -> ProgramInfo:
        return await rt.initialize(name, version)

    info = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    _report_info(info, f"initialized {_info_line(info)}", as_json=as_json)


@app.command("archive")
def archive(
    name: Annotated[str, typer.Argument(help="the program name")],
    version: VersionOption = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Archive a program version: it stays in the history but no longer runs."""

    async def work(rt: Runtime) -> ProgramInfo:
        return await rt.archive(name, version)

    info = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    _report_info(info, f"archived {_info_line(info)}", as_json=as_json)


@app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="the program name")],
    version: Annotated[int, typer.Option("--version", "-v", min=1, help="the version to promote")],
    devset: Annotated[
        Path | None, typer.Option("--devset", help="score both versions on this JSONL devset")
    ] = None,
    metric: Annotated[
        str | None, typer.Option("--metric", "-m", help="the metric the gate compares")
    ] = None,
    min_improvement: Annotated[
        float, typer.Option("--min-improvement", min=0.0, help="required gain over the current")
    ] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="skip the score gate (recorded)")] = False,
    by: Annotated[
        str | None, typer.Option("--by", help="who promotes (default: the user name)")
    ] = None,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a version the current one (what run, batch and the service use) past a score gate.

    Exit 1 naming both scores when the version scores below the current one plus
    --min-improvement. Rollback is promoting an older version.
    """
    if devset is not None and not devset.is_file():
        fail("bad_arguments", f"devset not found: {str(devset)!r}", as_json=as_json)
    who = by or _user()

    async def work(rt: Runtime) -> PromotionResult:
        return await rt.promote(
            name,
            version,
            devset=devset,
            metric=metric,
            min_improvement=min_improvement,
            force=force,
            promoted_by=who,
        )

    result = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    line = f"{escape(result.program)} v{result.version} is now current"
    if result.previous_version is not None:
        line += f" (was v{result.previous_version})"
    if result.score is not None:
        before = "-" if result.previous_score is None else f"{result.previous_score:.4f}"
        line += f": {escape(result.metric)} {result.score:.4f} vs {before}"
    if result.forced:
        line += " [yellow](forced)[/]"
    console.print(line, soft_wrap=True)


def _from(previous: int | None) -> str:
    return "the first promotion" if previous is None else f"from v{previous}"


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"


@app.command("tune")
def tune(
    name: Annotated[str, typer.Argument(help="the program name")],
    version: RunVersionOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="write the proposal as a new draft version")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, help="recent executions to learn from")
    ] = 500,
    as_json: JsonOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Propose timeouts, retry budgets and the strategy from recorded runs, with the evidence.

    Timeouts come from each module's p95 (with a margin), retry budgets from its transient
    error rate, the strategy from recorded durations and the critical path. --apply writes
    them as a new draft version.
    """

    async def work(rt: Runtime) -> TuneProposal:
        return await rt.tune(name, version=version, limit=limit, apply=apply)

    proposal = run_with_runtime(RuntimeOptions(database_url, config, as_json), work)
    if as_json:
        print_json(proposal.model_dump(mode="json"))
        return
    _render_tune(proposal)


def _render_tune(proposal: TuneProposal) -> None:
    console.print(
        f"[bold]{escape(proposal.program)}[/] v{proposal.version}: {proposal.runs} recorded runs",
        soft_wrap=True,
    )
    table = Table(title="Modules")
    table.add_column("module")
    table.add_column("runs", justify="right")
    table.add_column("p50", justify="right")
    table.add_column("p95", justify="right")
    table.add_column("timeout")
    table.add_column("attempts")
    table.add_column("transient", justify="right")
    for m in proposal.modules:
        table.add_row(
            escape(m.module),
            str(m.runs),
            format_ms(m.p50_ms),
            format_ms(m.p95_ms),
            _change(m.timeout, m.proposed_timeout, "s"),
            _change(m.max_attempts, m.proposed_max_attempts, ""),
            "-" if m.transient_rate is None else f"{m.transient_rate:.1%}",
        )
    console.print(table)
    for m in proposal.modules:
        for line in m.evidence:
            console.print(f"  {escape(m.module)}: {escape(line)}", soft_wrap=True)
    for line in proposal.strategy.evidence:
        console.print(f"  strategy: {escape(line)}", soft_wrap=True)
    for note in proposal.notes:
        console.print(f"  note: {escape(note)}", soft_wrap=True)
    if not proposal.changes:
        console.print("nothing to change")
        return
    console.print("proposed changes:")
    for change in proposal.changes:
        console.print(f"  {escape(change)}", soft_wrap=True)
    if proposal.applied_version is not None:
        console.print(
            f"applied as v{proposal.applied_version} (draft): dspex program init"
            f" {escape(proposal.program)} --version {proposal.applied_version}",
            soft_wrap=True,
        )
    else:
        console.print("apply them with --apply (a new draft version)")


def _change(current: float | None, proposed: float | None, unit: str) -> str:
    now = "-" if current is None else f"{current:g}{unit}"
    if proposed is None or proposed == current:
        return now
    return f"{now} → {proposed:g}{unit}"

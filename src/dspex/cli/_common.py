"""Helpers every command group shares: consoles, exit codes, options, errors, the runtime.

Exit codes are the same for every command: ``0`` success, ``1`` the operation ran and failed (an
execution failed, an initialization ended in ``error``), ``2`` a user mistake (unknown program,
bad input, program not ready, bad arguments, unusable configuration). A mistake is reported as
one line ``error: <message>`` on stderr (each field problem on its own short line below it), or
with ``--json`` as ``{"error": {"code", "message", "errors"}}`` on stdout; never as a traceback.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Protocol, TypeVar, get_args

import typer
from rich.console import Console
from rich.markup import escape as rich_escape

from dspex.errors import (
    ConfigError,
    DspexError,
    GraphError,
    NotFoundError,
    ProgramStateError,
    ResourceError,
    SecurityError,
    StorageError,
    ValidationError,
)

if TYPE_CHECKING:
    from dspex import Runtime

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "USER_MISTAKES",
    "WIDE_TERMINAL",
    "AttemptTimeoutOption",
    "BackendOption",
    "CacheOption",
    "CaptureMessagesOption",
    "ConfigOption",
    "DatabaseUrlOption",
    "JsonOption",
    "MaxAttemptsOption",
    "RunVersionOption",
    "RuntimeOptions",
    "VersionOption",
    "cache_modes",
    "check_choice",
    "console",
    "defaults_flags",
    "err_console",
    "error_payload",
    "escape",
    "exit_code_for",
    "fail",
    "format_ms",
    "format_time",
    "format_usd",
    "handle_errors",
    "own_process",
    "print_json",
    "print_model",
    "read_structured_file",
    "report_error",
    "run_with_runtime",
    "status_markup",
    "tune_for_program",
    "usage_error",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# Errors that mean "the request was wrong", not "the work failed": exit 2.
USER_MISTAKES: tuple[type[DspexError], ...] = (
    ConfigError,
    GraphError,
    NotFoundError,
    ProgramStateError,
    ResourceError,
    SecurityError,
    ValidationError,
)

_owned = False  # whether this process is the `dspex` command's own (its main ran)


def own_process() -> None:
    """Tune this interpreter as the ``dspex`` command's own (:func:`dspex.tune_process`).

    Only the console entry point calls it: commands invoked in someone else's process (a test's
    ``CliRunner``) leave that interpreter alone, as the library does.
    """
    global _owned
    import dspex

    dspex.tune_process()
    _owned = True


async def tune_for_program(
    rt: Runtime, program: str, version: int | None, backend: str | None
) -> None:
    """In the command's own process, tune for running ``program`` (and nothing else): when it
    calls a ``dspy.LM`` (:meth:`dspex.Runtime.calls_dspy_lm`), as
    ``dspex.tune_process(dspy_lm=True)`` says. Elsewhere, nothing (not even the query)."""
    if not _owned:
        return
    if await rt.calls_dspy_lm(program, version, backend=backend):
        import dspex

        dspex.tune_process(freeze=False, dspy_lm=True)


console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

T = TypeVar("T")


class _Dumpable(Protocol):
    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


M = TypeVar("M", bound=_Dumpable)

DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="database URL (default: dspex.toml / DSPEX_DATABASE_URL / ./.dspex/dspex.db)",
        show_default=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="configuration file (default: ./dspex.toml or DSPEX_CONFIG)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]
VersionOption = Annotated[
    int | None, typer.Option("--version", "-v", min=1, help="a version (default: the latest)")
]
RunVersionOption = Annotated[
    int | None,
    typer.Option(
        "--version", "-v", min=1, help="a version (default: the current one, else the latest)"
    ),
]
BackendOption = Annotated[
    str | None, typer.Option("--backend", "-b", help="run every LM module on this backend")
]
AttemptTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--attempt-timeout",
        min=0.0,
        help="seconds per attempt of a module calling a backend, 0 for none "
        "(default: [defaults] timeout, 30)",
    ),
]
CacheOption = Annotated[
    str | None,
    typer.Option(
        "--cache",
        help="the response cache for this run: off | read_only | read_write (default: the "
        "modules' and backends' own, else [cache] mode)",
    ),
]
MaxAttemptsOption = Annotated[
    int | None,
    typer.Option(
        "--max-attempts",
        min=1,
        help="attempts of a module calling a backend (default: [defaults.retry], 3)",
    ),
]


def cache_modes() -> tuple[str, ...]:
    """The ``--cache`` choices."""
    import dspex

    return get_args(dspex.CacheMode)


CaptureMessagesOption = Annotated[
    bool | None,
    typer.Option(
        "--capture-messages/--no-capture-messages",
        help="record each LM attempt's messages and raw response (default: [capture] messages,"
        " off)",
        show_default=False,
    ),
]


def defaults_flags(
    attempt_timeout: float | None,
    max_attempts: int | None,
    capture_messages: bool | None = None,
) -> dict[str, tuple[str, Any]]:
    """The settings the ``--attempt-timeout``/``--max-attempts``/``--capture-messages`` flags
    override, for :func:`dspex.config.load_settings` (a module's own ``timeout``/``retry``
    still wins)."""
    flags: dict[str, tuple[str, Any]] = {}
    if attempt_timeout is not None:
        flags["defaults.timeout"] = ("--attempt-timeout", attempt_timeout)
    if max_attempts is not None:
        flags["defaults.retry.max_attempts"] = ("--max-attempts", max_attempts)
    if capture_messages is not None:
        flag = "--capture-messages" if capture_messages else "--no-capture-messages"
        flags["capture.messages"] = (flag, capture_messages)
    return flags


def usage_error(message: str) -> NoReturn:
    """Report an unusable argument on stderr and exit with code 2 (no stack trace)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(EXIT_USAGE)


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout, no Rich markup or wrapping."""
    typer.echo(json.dumps(data, indent=2, default=str))


def print_model(model: M, render: Callable[[M], None], *, as_json: bool) -> None:
    """A command's result: its JSON under ``--json``, else ``render(model)`` for people."""
    if as_json:
        print_json(model.model_dump(mode="json"))
    else:
        render(model)


def format_ms(value: float | None) -> str:
    """A duration for people: ``-`` when unknown, ``0.4 ms``, ``850 ms``, then seconds."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 10_000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.1f} s"


def format_usd(value: float | None) -> str:
    """US dollars for people: ``-`` when unknown, ``$0``, ``$0.000375``, ``$12.3400``."""
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if value >= 1:
        return f"${value:,.4f}"
    return f"${value:.6g}"


# how a run's status (an execution's, a batch's, a step's or an attempt's outcome) is coloured
_STATUS_COLOURS = {
    "completed": "green",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "interrupted": "yellow",
}

# a terminal this wide shows a creation time next to a full id in a table of runs
WIDE_TERMINAL = 110


def status_markup(status: str) -> str:
    """A run's status in its colour (unfinished ones in cyan), escaped for Rich."""
    return f"[{_STATUS_COLOURS.get(status, 'cyan')}]{escape(status)}[/]"


def format_time(moment: datetime) -> str:
    """When something happened, as ``2026-01-31 12:00:00``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def exit_code_for(exc: DspexError) -> int:
    """2 for a user mistake, 1 for work that ran and failed (storage, backends, …)."""
    return EXIT_USAGE if isinstance(exc, USER_MISTAKES) else EXIT_FAILED


def error_payload(
    code: str, message: str, errors: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The ``--json`` shape of an error: ``{"error": {"code", "message", "errors"}}``."""
    return {"error": {"code": code, "message": message, "errors": errors or []}}


def _details(exc: DspexError) -> list[dict[str, str]]:
    errors = getattr(exc, "errors", None) or []
    return [e.to_dict() for e in errors]


def _headline(exc: DspexError) -> str:
    """The message without the field problems ValidationError appends (they get their own lines)."""
    errors = getattr(exc, "errors", None) or []
    if errors:
        joined = "; ".join(f"{e.field}: {e.message}" for e in errors)
        if exc.message.endswith(" " + joined):
            return exc.message[: -len(joined) - 1]
    return exc.message


def report_error(exc: DspexError, *, as_json: bool) -> None:
    """Print an error the one way every command does (see the module docstring)."""
    if as_json:
        print_json(error_payload(exc.code, exc.message, _details(exc)))
        return
    err_console.print(f"[bold red]error:[/] {escape(_headline(exc))}", markup=True, soft_wrap=True)
    for detail in getattr(exc, "errors", None) or []:
        err_console.print(
            f"  {escape(detail.field or '-')}: {escape(detail.message)} "
            f"[dim]({escape(detail.code)})[/]",
            markup=True,
            soft_wrap=True,
        )


def fail(code: str, message: str, *, as_json: bool, exit_code: int = EXIT_USAGE) -> NoReturn:
    """Report a mistake found by the CLI itself (not raised by dspex) and exit."""
    if as_json:
        print_json(error_payload(code, message))
    else:
        err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(exit_code)


def older_than_age(value: str | None, *, as_json: bool) -> timedelta | None:
    """``--older-than`` as an age (``30d``, ``12h``…), or ``None`` when not given; a bad value
    fails as a usage error."""
    if value is None:
        return None
    from dspex import parse_age
    from dspex.errors import ValidationError

    try:
        return parse_age(value)
    except ValidationError as exc:
        fail("bad_arguments", f"--older-than: {exc.message}", as_json=as_json)


def check_choice(value: str | None, choices: tuple[str, ...], what: str, *, as_json: bool) -> None:
    """Refuse (exit 2, ``bad_arguments``) an option value outside ``choices``; ``None`` (the
    option not given) passes."""
    if value is not None and value not in choices:
        fail(
            "bad_arguments",
            f"unknown {what} {value!r} (choose from: {', '.join(choices)})",
            as_json=as_json,
        )


@contextmanager
def handle_errors(*, as_json: bool, passthrough: bool = False) -> Iterator[None]:
    """Turn a :class:`~dspex.errors.DspexError` into the standard report and exit code.

    With ``passthrough`` a :class:`~dspex.errors.StorageError` is re-raised for the caller.
    """
    try:
        yield
    except DspexError as exc:
        if passthrough and isinstance(exc, StorageError):
            raise
        report_error(exc, as_json=as_json)
        raise typer.Exit(exit_code_for(exc)) from None


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Where the runtime's database and configuration come from, and how errors are printed."""

    database_url: str | None = None
    config: Path | None = None
    as_json: bool = False
    reraise: bool = False  # let a command handle StorageError itself (see ``dspex db``)
    flags: Mapping[str, tuple[str, Any]] = field(default_factory=dict)  # defaults_flags()


def run_with_runtime(options: RuntimeOptions, work: Callable[[Runtime], Awaitable[T]]) -> T:
    """Open the runtime, run ``work`` on it, close it; errors become the standard report.

    The runtime (and with it the database stack) is imported here, not at start-up, so that
    ``dspex --help`` stays fast.
    """
    import dspex

    async def go() -> T:
        settings = None
        if options.flags:
            from dspex.config import load_settings

            settings = load_settings(options.config, flags=options.flags)
        async with dspex.Runtime.open(
            options.database_url, config=options.config, settings=settings
        ) as rt:
            return await work(rt)

    with handle_errors(as_json=options.as_json, passthrough=options.reraise):
        return asyncio.run(go())


def read_structured_file(path: Path) -> Any:
    """Load a YAML or JSON file; an unreadable or malformed file is a usage error.

    YAML is read by dspex's spec reader (no aliases, bounded nesting), as program files are.
    """
    import dspex

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        usage_error(f"cannot read {str(path)!r}: {exc}")
    if path.suffix.lower() != ".json":
        try:
            return dspex.load_yaml_spec(text, source=str(path))
        except DspexError as exc:
            problems = "; ".join(d["message"] for d in _details(exc)) or exc.message
            usage_error(f"{str(path)!r} is not valid YAML: {problems}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        usage_error(f"{str(path)!r} is not valid JSON: {exc}")
    except RecursionError:
        usage_error(f"{str(path)!r} nests arrays or objects too deep")


class Terminated:
    """SIGTERM cancels the running command's task, as Ctrl-C does.

    ``dspex run`` then records its execution ``cancelled`` and ``dspex batch`` stops claiming and
    records its running items ``cancelled``; either way leases are released before the process
    exits, so nothing waits ``running`` for its lease to expire.
    """

    def __init__(self) -> None:
        self.received = False

    @contextmanager
    def cancels_current_task(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            # Cancel once: a second signal must not interrupt the writes of the shutdown.
            if not self.received:
                self.received = True
                task.cancel()

        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, non-main thread
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGTERM)


def escape(value: object) -> str:
    """``value`` as text that Rich prints as is: ``[bold]`` or ``optional[int]`` in data is not
    read as markup. Everything printed with markup that came from data goes through this."""
    return rich_escape(str(value))

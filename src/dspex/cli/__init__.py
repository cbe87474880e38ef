"""The ``dspex`` command line: Typer + Rich, thin over the public API.

Command groups live in their own modules and are registered in :data:`GROUPS`, the one place a new
group (program, run, batch, graph, health, …) is added. Modules here import only :mod:`dspex` and
:mod:`dspex.errors`; DSPy is never imported at start-up so ``dspex --help`` stays fast.

No command prints a traceback: an exception that is not a :class:`~dspex.errors.DspexError` is
reported by :func:`dspex.cli._crash.report_crash` (one line, the traceback in a file, exit 70).
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from dspex.cli._common import own_process
from dspex.cli._crash import clear_subject, report_crash

__all__ = ["COMMANDS", "GROUPS", "app", "main"]

# (module under dspex.cli, the Typer attribute in it, the command group name)
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("signature", "app", "signature"),
    ("program", "app", "program"),
    ("executions", "app", "executions"),
    ("batches", "app", "batches"),
    ("dataset", "app", "dataset"),
    ("db", "app", "db"),
    ("optimize", "app", "optimizations"),
    ("config", "app", "config"),
    ("cache", "app", "cache"),
)

# (module under dspex.cli, the function in it, the top-level command name)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run", "run"),
    ("graph", "graph", "graph"),
    ("batch", "batch", "batch"),
    ("evaluate", "evaluate", "evaluate"),
    ("demo", "demo", "demo"),
    ("health", "health", "health"),
    ("cleanup", "cleanup", "cleanup"),
    ("serve", "serve", "serve"),
    ("optimize", "optimize", "optimize"),
)

_ARGS = "dspex.args"

# What Typer raises on purpose (usage errors, --help, exit codes, Ctrl-C at a prompt).
_TYPER_OWN = (typer.exceptions.TyperException, typer.Exit, typer.Abort, EOFError)


class _Commands(TyperGroup):
    """The root command group: turns an unexpected exception into a crash report."""

    # ``ctx`` is Typer's context: its class lives in a private module, so it is typed Any here.
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta[_ARGS] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        clear_subject()
        try:
            return super().invoke(ctx)
        except _TYPER_OWN:
            raise
        except Exception as exc:
            args: list[str] = ctx.meta.get(_ARGS, [])
            raise typer.Exit(report_crash(exc, as_json="--json" in args, argv=args)) from None


app = typer.Typer(
    name="dspex",
    cls=_Commands,
    help="dspex: the production runtime for DSPy programs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Typer's Rich help gives every option a type, flags included (`--json <bool>`
    # reads as if it took a value); the plain form shows types only for options that take one.
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        import dspex

        typer.echo(f"dspex {dspex.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="print the version and exit", is_eager=True, callback=_print_version
        ),
    ] = False,
) -> None:
    """dspex: the production runtime for DSPy programs."""


def _register() -> None:
    for module_name, attr, group in GROUPS:
        module = importlib.import_module(f"dspex.cli.{module_name}")
        sub: typer.Typer = getattr(module, attr)
        app.add_typer(sub, name=group)
    for module_name, attr, command in COMMANDS:
        module = importlib.import_module(f"dspex.cli.{module_name}")
        app.command(command)(getattr(module, attr))


_register()


def main() -> None:
    """The console script entry point."""
    # The one place a `dspex` process tunes its interpreter: it is dspex's own (the library,
    # used in someone else's process, never does); a command may tune it further for its work.
    own_process()
    try:
        app(prog_name="dspex")
    except Exception as exc:  # outside any command (the root group reports those)
        args = sys.argv[1:]
        sys.exit(report_crash(exc, as_json="--json" in args, argv=args))

"""What the command line says about itself: ``--version``, ``--help`` and how flags are given."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from cli_support import cli

import dspex
from dspex.cli import app


def _commands() -> list[tuple[str, ...]]:
    """Every command, as the user types it (``("program", "register")``), from the app itself."""
    found: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            found.append(path)
            return
        for name, sub in subcommands.items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return sorted(found)


COMMANDS = _commands()


def test_the_command_tree_is_walked() -> None:
    assert {("run",), ("program", "register"), ("executions", "show")} <= set(COMMANDS)


def test_version_prints_the_package_version_and_exits_zero(workdir: Path) -> None:
    outcome = cli("--version")
    assert outcome.code == 0
    assert outcome.out.strip() == f"dspex {dspex.__version__}"


def test_top_level_help_offers_the_version_flag(workdir: Path) -> None:
    outcome = cli("--help")
    assert outcome.code == 0
    assert "--version" in outcome.out


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_no_value_for_a_flag(workdir: Path, command: tuple[str, ...]) -> None:
    outcome = cli(*command, "--help")
    assert outcome.code == 0, outcome.err
    assert "<bool>" not in outcome.out
    # a flag's line names no type: "--json   print machine-readable JSON"
    flags = re.findall(r"--(?:json|init|dry-run|all-versions)(?![\w-])", outcome.out)
    for flag in ("--help", *flags):
        whole = re.compile(re.escape(flag) + r"(?![\w-])")
        line = next(line for line in outcome.out.splitlines() if whole.search(line))
        assert "<" not in whole.split(line, 1)[1].split("  ")[0], line


def test_an_option_that_takes_a_value_still_shows_its_type(workdir: Path) -> None:
    outcome = cli("executions", "list", "--help")
    assert re.search(r"--limit <int range>", outcome.out), outcome.out


def test_json_is_a_plain_flag(workdir: Path) -> None:
    outcome = cli("executions", "list", "--json")
    assert outcome.code == 0
    assert outcome.json() == {"items": [], "next_cursor": None}


def test_a_value_after_the_json_flag_is_a_usage_error_naming_it(workdir: Path) -> None:
    outcome = cli("executions", "list", "--json", "true")
    assert outcome.code == 2
    assert "true" in outcome.err
    assert "Traceback" not in outcome.err

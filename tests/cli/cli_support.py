"""Shared by the CLI tests: a small mock-backend program and a CliRunner wrapper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dspex.cli import app

# three modules: two independent ones (level 0), then one that needs both (level 1)
PROGRAM: dict[str, Any] = {
    "name": "triage",
    "signature": "ticket: str, priority: int -> summary: str, team: str, urgent: bool",
    "modules": {
        "summarize": {
            "kind": "predict",
            "signature": "ticket: str -> summary: str",
            "estimated_ms": 100,
        },
        "route": {
            "kind": "predict",
            "signature": "ticket: str, priority: int -> team: str",
            "estimated_ms": 300,
        },
        "flag": {
            "kind": "chain_of_thought",
            "signature": "summary: str, team: str -> urgent: bool",
            "inputs": {"summary": "summarize.summary", "team": "route.team"},
            "estimated_ms": 200,
        },
    },
}

# a second backend that fails every call, for `--backend broken`
BROKEN_BACKEND_CONFIG = """
[backends.default]
kind = "mock"

[backends.broken]
kind = "mock"
failure_rate = 1.0
"""

runner = CliRunner()


@dataclass(frozen=True)
class Outcome:
    """What one command invocation did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def cli(*args: str) -> Outcome:
    """Run ``dspex ARGS…`` in-process."""
    result = runner.invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Outcome(result.exit_code, result.stdout, result.stderr)


def register_ready() -> None:
    """Register and initialize the program in ``program.yaml`` of the working directory."""
    outcome = cli("program", "register", "program.yaml", "--init")
    assert outcome.code == 0, outcome.err


def run_ok(**inputs: str) -> dict[str, Any]:
    """Run the program and return its ``--json`` result."""
    args = ["run", "triage", "--json"]
    for key, value in (inputs or {"ticket": "printer is on fire", "priority": "2"}).items():
        args += ["-i", f"{key}={value}"]
    outcome = cli(*args)
    assert outcome.code == 0, outcome.out + outcome.err
    data: dict[str, Any] = outcome.json()
    return data


def shared_prefix(ids: list[str]) -> str:
    """The longest start every id has (ids made close together share their time part)."""
    first, last = min(ids), max(ids)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def dspex_process(
    *args: str, cwd: Path, path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m dspex ARGS`` in a fresh process in ``cwd``, with no ``DSPEX_*`` variables of
    this environment (``path``: put first on ``PYTHONPATH``, for the programs' own modules)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "dspex", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

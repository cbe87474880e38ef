"""``dspex executions cancel`` through Typer's CliRunner."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cli_support import cli, register_ready, run_ok

import dspex


def _held_execution(workdir: Path, *, lease_seconds: float) -> str:
    """An execution held by another process (``replica-1:abc``) for ``lease_seconds``."""

    async def make() -> str:
        async with dspex.Runtime.open(cwd=workdir) as rt:
            store = rt.store
            program = await store.get_program("triage", None)
            started = await store.start_execution(
                "triage",
                program.version,
                {"ticket": "slow", "priority": "2"},
                worker_id="replica-1:abc",
                lease_seconds=lease_seconds,
            )
            return started.id

    return asyncio.run(make())


def test_cancel_records_the_request_for_the_process_running_it(workdir: Path) -> None:
    register_ready()
    execution_id = _held_execution(workdir, lease_seconds=3600)
    outcome = cli("executions", "cancel", execution_id[:24], "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert (data["execution_id"], data["status"], data["worker_id"]) == (
        execution_id,
        "running",
        "replica-1:abc",
    )
    human = cli("executions", "cancel", execution_id)
    assert "cancel requested; replica-1:abc stops it" in human.out


def test_cancel_of_an_execution_nobody_holds_cancels_it_at_once(workdir: Path) -> None:
    register_ready()
    execution_id = _held_execution(workdir, lease_seconds=0.001)
    outcome = cli("executions", "cancel", execution_id)
    assert outcome.code == 0, outcome.err
    assert "cancelled" in outcome.out
    shown = cli("executions", "show", execution_id, "--json").json()
    assert (shown["status"], shown["error"]["code"]) == ("cancelled", "cancelled")


def test_cancel_of_a_finished_execution_is_an_error(workdir: Path) -> None:
    register_ready()
    execution_id = run_ok()["execution_id"]
    outcome = cli("executions", "cancel", execution_id, "--json")
    assert outcome.code != 0
    assert outcome.json()["error"]["code"] == "execution_finished"
    assert "already finished (completed)" in outcome.json()["error"]["message"]

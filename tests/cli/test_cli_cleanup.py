"""``dspex cleanup`` through Typer's CliRunner: retention ages."""

from __future__ import annotations

from pathlib import Path

from cli_support import cli, register_ready, run_ok


def test_older_than_zero_days_deletes_every_finished_execution(workdir: Path) -> None:
    register_ready()
    ids = {run_ok()["execution_id"], run_ok()["execution_id"]}
    outcome = cli("cleanup", "--older-than", "0d", "--json")
    assert outcome.code == 0, outcome.out + outcome.err
    deleted = outcome.json()["executions_deleted"]
    assert (deleted["count"], set(deleted["ids"])) == (2, ids)
    assert cli("executions", "list", "--json").json()["items"] == []


def test_a_negative_age_is_a_usage_error(workdir: Path) -> None:
    outcome = cli("cleanup", "--older-than", "-1d")
    assert outcome.code == 2
    assert "not an age" in outcome.err

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


def test_retention_reports_the_space_sqlite_gave_back(workdir: Path) -> None:
    register_ready()
    run_ok()
    outcome = cli("cleanup", "--older-than", "0d", "--json")
    assert outcome.code == 0, outcome.out + outcome.err
    space = outcome.json()["space"]
    assert space["auto_vacuum"] == "incremental"  # a new database
    assert space["vacuum_needed"] is False
    human = cli("cleanup", "--older-than", "0d")
    assert "bytes given back" in human.out
    assert "batches deleted (retention)" in human.out


def test_an_older_database_is_told_to_vacuum_and_vacuum_converts_it(workdir: Path) -> None:
    import sqlite3

    register_ready()
    path = workdir / ".dspex" / "dspex.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute("PRAGMA auto_vacuum = NONE")
        conn.execute("VACUUM")
    advised = cli("cleanup", "--older-than", "0d")
    assert "dspex cleanup --vacuum" in advised.out
    vacuumed = cli("cleanup", "--vacuum", "--json").json()["space"]
    assert (vacuumed["vacuumed"], vacuumed["auto_vacuum"]) == (True, "incremental")


def test_a_batch_whose_driver_died_is_failed_and_its_resume_command_printed(
    workdir: Path,
) -> None:
    import json

    register_ready()
    (workdir / "in.jsonl").write_text(
        "".join(json.dumps({"ticket": f"t{i}", "priority": 1}) + "\n" for i in range(2))
    )
    batch_id = cli("batch", "triage", "in.jsonl", "--json").json()["batch_id"]
    # the batch as a driver that died at once would have left it
    import sqlite3

    with sqlite3.connect(workdir / ".dspex" / "dspex.db") as conn:
        conn.execute(
            "UPDATE batches SET status = 'running', finished_at = NULL, created_at = ?"
            " WHERE id = ?",
            ("2000-01-01 00:00:00.000000", batch_id),
        )
        conn.execute("DELETE FROM executions WHERE batch_id = ?", (batch_id,))
    outcome = cli("cleanup")
    assert outcome.code == 0, outcome.out + outcome.err
    where = workdir / "in.jsonl"
    assert f"resume with: dspex batch triage {where} --resume {batch_id}" in outcome.out
    assert cli("batches", "show", batch_id, "--json").json()["status"] == "failed"

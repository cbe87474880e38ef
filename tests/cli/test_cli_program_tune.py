"""``dspex program tune``: the proposal from recorded runs, with its evidence, and ``--apply``."""

from __future__ import annotations

from pathlib import Path

from cli_support import cli, register_ready, run_ok


def test_tune_json_proposes_from_recorded_runs_and_apply_writes_a_draft(workdir: Path) -> None:
    register_ready()
    for i in range(6):
        run_ok(ticket=f"ticket {i}", priority="1")
    outcome = cli("program", "tune", "triage", "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert (data["program"], data["version"], data["runs"]) == ("triage", 1, 6)
    assert [m["module"] for m in data["modules"]] == ["summarize", "route", "flag"]
    assert all(m["proposed_timeout"] == 1.0 for m in data["modules"])
    assert data["changes"]
    assert data["applied_version"] is None

    applied = cli("program", "tune", "triage", "--apply", "--json")
    assert applied.json()["applied_version"] == 2
    shown = cli("program", "show", "triage", "--version", "2", "--json").json()
    assert shown["program"]["status"] == "draft"
    assert shown["spec"]["modules"]["route"]["timeout"] == 1.0


def test_tune_prints_the_evidence_and_the_changes_for_people(workdir: Path) -> None:
    register_ready()
    for i in range(5):
        run_ok(ticket=f"ticket {i}", priority="1")
    outcome = cli("program", "tune", "triage")
    assert outcome.code == 0, outcome.err
    assert "5 recorded runs" in outcome.out
    assert "p95" in outcome.out
    assert "proposed changes:" in outcome.out
    assert "apply them with --apply" in outcome.out
    applied = cli("program", "tune", "triage", "--apply")
    assert "applied as v2 (draft)" in applied.out


def test_tune_of_a_program_without_runs_changes_nothing(workdir: Path) -> None:
    register_ready()
    outcome = cli("program", "tune", "triage", "--apply")
    assert outcome.code == 0
    assert "nothing to change" in outcome.out
    assert cli("program", "tune", "missing").code == 2

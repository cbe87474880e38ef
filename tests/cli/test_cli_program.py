"""``dspex program register|list|show|init|archive`` through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import yaml
from cli_support import PROGRAM, cli, register_ready

PROGRAM_INFO_KEYS = {
    "name",
    "version",
    "status",
    "error",
    "spec_hash",
    "created_at",
    "updated_at",
    "execution_count",
    "success_count",
    "failure_count",
    "success_rate",
    "mean_duration_ms",
    "modules",
    "signature",
}


def write_spec(path: Path, **changes: object) -> Path:
    path.write_text(yaml.safe_dump({**PROGRAM, **changes}, sort_keys=False))
    return path


def test_register_prints_name_version_and_draft_status(workdir: Path) -> None:
    outcome = cli("program", "register", "program.yaml")
    assert outcome.code == 0
    assert "triage v1" in outcome.out
    assert "draft" in outcome.out


def test_register_creates_the_embedded_database_in_the_working_directory(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    assert (workdir / ".dspex" / "dspex.db").is_file()


def test_register_json_prints_exactly_the_program_info_keys(workdir: Path) -> None:
    outcome = cli("program", "register", "program.yaml", "--json")
    data = outcome.json()
    assert outcome.code == 0
    assert set(data) == PROGRAM_INFO_KEYS
    assert (data["name"], data["version"], data["status"], data["modules"]) == (
        "triage",
        1,
        "draft",
        3,
    )


def test_register_with_init_leaves_the_program_ready(workdir: Path) -> None:
    outcome = cli("program", "register", "program.yaml", "--init", "--json")
    assert outcome.code == 0
    assert outcome.json()["status"] == "ready"


def test_registering_an_unchanged_spec_keeps_its_version(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    again = cli("program", "register", "program.yaml", "--json")
    assert again.json()["version"] == 1


def test_registering_a_changed_spec_makes_a_new_version(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    write_spec(workdir / "program.yaml", description="changed")
    again = cli("program", "register", "program.yaml", "--json")
    assert again.json()["version"] == 2


def test_a_malformed_spec_exits_two_with_each_problem_on_its_own_line(workdir: Path) -> None:
    bad = {**PROGRAM, "strategy": "fastest", "modules": {"a": {"kind": "predict", "timeout": -1}}}
    (workdir / "bad.yaml").write_text(yaml.safe_dump(bad))
    outcome = cli("program", "register", "bad.yaml")
    assert outcome.code == 2
    lines = outcome.err.splitlines()
    assert lines[0].startswith("error:")
    assert any(line.strip().startswith("strategy:") for line in lines[1:])
    assert any(line.strip().startswith("modules.a.timeout:") for line in lines[1:])
    assert "Traceback" not in outcome.out + outcome.err


def test_a_malformed_spec_with_json_prints_the_error_object_on_stdout(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text(yaml.safe_dump({**PROGRAM, "strategy": "fastest"}))
    outcome = cli("program", "register", "bad.yaml", "--json")
    error = outcome.json()["error"]
    assert outcome.code == 2
    assert set(error) == {"code", "message", "errors"}
    assert error["code"] == "spec_invalid"
    assert [e["field"] for e in error["errors"]] == ["strategy"]


def test_a_cyclic_graph_is_a_user_mistake(workdir: Path) -> None:
    modules = {
        "a": {"kind": "predict", "signature": "ticket: str -> x: str", "inputs": {"ticket": "b.y"}},
        "b": {"kind": "predict", "signature": "x: str -> y: str", "inputs": {"x": "a.x"}},
    }
    write_spec(workdir / "cycle.yaml", modules=modules, signature="ticket: str -> y: str")
    outcome = cli("program", "register", "cycle.yaml")
    assert outcome.code == 2
    assert "cycle" in outcome.err


def test_a_missing_spec_file_exits_two(workdir: Path) -> None:
    outcome = cli("program", "register", "nowhere.yaml")
    assert outcome.code == 2
    assert "not found" in outcome.err


def test_list_shows_each_program_with_its_status(workdir: Path) -> None:
    register_ready()
    outcome = cli("program", "list")
    assert outcome.code == 0
    assert "triage" in outcome.out
    assert "ready" in outcome.out


def test_list_with_no_programs_says_so(workdir: Path) -> None:
    outcome = cli("program", "list")
    assert outcome.code == 0
    assert "no programs" in outcome.out


def test_list_json_shows_only_the_latest_version_unless_asked(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    write_spec(workdir / "program.yaml", description="v2")
    cli("program", "register", "program.yaml")
    latest = cli("program", "list", "--json").json()
    every = cli("program", "list", "--all-versions", "--json").json()
    assert [(p["name"], p["version"]) for p in latest] == [("triage", 2)]
    assert sorted(p["version"] for p in every) == [1, 2]
    assert set(latest[0]) == PROGRAM_INFO_KEYS


def test_show_prints_signature_modules_and_plan(workdir: Path) -> None:
    register_ready()
    outcome = cli("program", "show", "triage")
    assert outcome.code == 0
    for text in ("ticket: str", "summarize", "route", "flag", "chain_of_thought", "route → flag"):
        assert text in outcome.out


def test_show_json_has_program_spec_and_plan(workdir: Path) -> None:
    register_ready()
    data = cli("program", "show", "triage", "--json").json()
    assert set(data) == {"program", "spec", "plan"}
    assert set(data["program"]) == PROGRAM_INFO_KEYS
    assert list(data["spec"]["modules"]) == ["summarize", "route", "flag"]
    assert data["plan"]["critical_path"] == ["route", "flag"]


def test_show_an_unknown_program_exits_two_with_one_line(workdir: Path) -> None:
    outcome = cli("program", "show", "nope")
    assert outcome.code == 2
    assert outcome.err.count("\n") == 1
    assert outcome.err.startswith("error:")
    assert "nope" in outcome.err


def test_show_an_unknown_version_exits_two(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    outcome = cli("program", "show", "triage", "--version", "7", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "not_found"


def test_init_makes_a_draft_ready(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    outcome = cli("program", "init", "triage")
    assert outcome.code == 0
    assert "ready" in outcome.out


def test_init_that_ends_in_error_exits_one_with_the_reason(workdir: Path) -> None:
    modules = dict(PROGRAM["modules"])
    modules["route"] = {**modules["route"], "backend": "nowhere"}
    write_spec(workdir / "program.yaml", modules=modules)
    cli("program", "register", "program.yaml")
    outcome = cli("program", "init", "triage", "--json")
    assert outcome.code == 1
    assert outcome.json()["status"] == "error"
    assert "nowhere" in outcome.json()["error"]
    assert "nowhere" in outcome.err


def test_init_of_an_unknown_program_exits_two(workdir: Path) -> None:
    outcome = cli("program", "init", "nope")
    assert outcome.code == 2


def test_archive_marks_the_program_archived(workdir: Path) -> None:
    register_ready()
    outcome = cli("program", "archive", "triage", "--json")
    assert outcome.code == 0
    assert outcome.json()["status"] == "archived"


def test_archive_prints_the_new_status(workdir: Path) -> None:
    register_ready()
    outcome = cli("program", "archive", "triage")
    assert outcome.code == 0
    assert "archived" in outcome.out


def test_archiving_twice_is_a_user_mistake(workdir: Path) -> None:
    register_ready()
    cli("program", "archive", "triage")
    outcome = cli("program", "archive", "triage")
    assert outcome.code == 2
    assert "archived" in outcome.err


def test_database_url_option_selects_another_database(workdir: Path) -> None:
    other = f"sqlite:///{workdir / 'other.db'}"
    cli("program", "register", "program.yaml", "--database-url", other)
    assert [
        p["name"] for p in cli("program", "list", "--database-url", other, "--json").json()
    ] == ["triage"]
    assert cli("program", "list", "--json").json() == []


def test_a_missing_config_file_is_a_user_mistake(workdir: Path) -> None:
    outcome = cli("program", "list", "--config", "missing.toml", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "config_invalid"


def test_show_of_a_program_in_error_prints_the_reason(workdir: Path) -> None:
    modules = dict(PROGRAM["modules"])
    modules["route"] = {**modules["route"], "backend": "nowhere"}
    write_spec(workdir / "program.yaml", modules=modules)
    cli("program", "register", "program.yaml", "--init")
    outcome = cli("program", "show", "triage")
    assert outcome.code == 0
    assert "reason:" in outcome.out
    assert "nowhere" in outcome.out

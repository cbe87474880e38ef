"""``dspex program register|list|show|init|archive`` through Typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_support import PROGRAM, cli, register_ready
from tests.service._support import service

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
    "current",
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
    assert set(data) == {"program", "spec", "plan", "current_version", "evaluations", "promotions"}
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


def test_init_naming_an_unconfigured_backend_exits_two_with_the_reason(workdir: Path) -> None:
    modules = dict(PROGRAM["modules"])
    modules["route"] = {**modules["route"], "backend": "nowhere"}
    write_spec(workdir / "program.yaml", modules=modules)
    cli("program", "register", "program.yaml")
    outcome = cli("program", "init", "triage", "--json")
    assert outcome.code == 2
    assert outcome.json()["status"] == "error"
    assert "nowhere" in outcome.json()["error"]
    assert "nowhere" in outcome.err


def test_register_with_init_refusing_a_disallowed_import_exits_two(workdir: Path) -> None:
    spec = {
        "name": "tool",
        "signature": "text: str -> out: str",
        "modules": {
            "dump": {
                "kind": "python",
                "function": "json:dumps",
                "signature": "text: str -> out: str",
                "inputs": {"text": "$input.text"},
            }
        },
    }
    (workdir / "tool.yaml").write_text(yaml.safe_dump(spec))
    outcome = cli("program", "register", "tool.yaml", "--init", "--json")
    assert outcome.code == 2
    assert outcome.json()["status"] == "error"
    assert outcome.json()["error"].startswith("import_not_allowed:")
    assert "json:dumps" in outcome.err


def test_register_with_init_of_a_missing_corpus_exits_two(workdir: Path) -> None:
    spec = {
        "name": "rag",
        "signature": "q: str -> passages: list[str]",
        "modules": {
            "r": {"kind": "retrieve", "corpus": "missing.txt", "inputs": {"query": "$input.q"}}
        },
    }
    (workdir / "rag.yaml").write_text(yaml.safe_dump(spec))
    outcome = cli("program", "register", "rag.yaml", "--init")
    assert outcome.code == 2
    assert "missing.txt" in outcome.err
    assert "Traceback" not in outcome.err


def test_init_of_a_module_whose_import_raises_exits_one_with_the_reason(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "cli_boom_module.py").write_text(
        'raise RuntimeError("boom while importing")\n\ndef f(text):\n    return text\n'
    )
    monkeypatch.syspath_prepend(str(workdir))
    (workdir / "dspex.toml").write_text('allowed_imports = ["cli_boom_module"]\n')
    spec = {
        "name": "boom",
        "signature": "text: str -> out: str",
        "modules": {
            "f": {
                "kind": "python",
                "function": "cli_boom_module:f",
                "signature": "text: str -> out: str",
                "inputs": {"text": "$input.text"},
            }
        },
    }
    (workdir / "boom.yaml").write_text(yaml.safe_dump(spec))
    outcome = cli("program", "register", "boom.yaml", "--init", "--json")
    assert outcome.code == 1
    assert outcome.json()["status"] == "error"
    assert "RuntimeError: boom while importing" in outcome.json()["error"]


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


def test_show_prints_bracketed_types_as_written(workdir: Path) -> None:
    spec = {
        "name": "opt",
        "signature": "ticket: str, priority: optional[int] -> summary: str",
        "modules": {"summarize": {"kind": "predict", "signature": "ticket: str -> summary: str"}},
    }
    (workdir / "opt.yaml").write_text(yaml.safe_dump(spec))
    cli("program", "register", "opt.yaml")
    outcome = cli("program", "show", "opt")
    assert outcome.code == 0
    assert "priority: optional[int]" in outcome.out


@pytest.mark.parametrize("cli_first", [True, False], ids=["cli-first", "http-first"])
def test_the_same_yaml_from_the_cli_and_over_http_is_one_version(
    workdir: Path, cli_first: bool
) -> None:
    database = f"sqlite:///{workdir / 'dspex.db'}"
    body = (workdir / "program.yaml").read_text()

    def over_http() -> int:
        with service(workdir) as client:
            response = client.post(
                "/programs", content=body, headers={"Content-Type": "application/yaml"}
            )
        assert response.status_code == 201, response.text
        version: int = response.json()["version"]
        return version

    def from_cli() -> int:
        outcome = cli("program", "register", "program.yaml", "--database-url", database, "--json")
        assert outcome.code == 0, outcome.err
        version: int = outcome.json()["version"]
        return version

    first, second = (from_cli(), over_http()) if cli_first else (over_http(), from_cli())
    assert first == second == 1
    listed = cli("program", "list", "--all-versions", "--database-url", database, "--json")
    assert [(p["name"], p["version"]) for p in listed.json()] == [("triage", 1)]


def test_a_relative_corpus_registered_from_the_cli_and_over_http_is_one_version(
    workdir: Path,
) -> None:
    (workdir / "corpora").mkdir()
    (workdir / "corpora" / "facts.txt").write_text("Paris is the capital of France.\n")
    (workdir / "dspex.toml").write_text('corpus_dirs = ["corpora"]\n')
    spec = {
        "name": "rag",
        "signature": "q: str -> passages: list[str]",
        "modules": {
            "r": {
                "kind": "retrieve",
                "corpus": "corpora/facts.txt",
                "inputs": {"query": "$input.q"},
            }
        },
    }
    (workdir / "rag.yaml").write_text(yaml.safe_dump(spec))
    database = f"sqlite:///{workdir / 'dspex.db'}"
    registered = cli("program", "register", "rag.yaml", "--database-url", database, "--json")
    assert registered.code == 0, registered.err
    with service(workdir) as client:
        response = client.post("/programs", json=spec)
        shown = client.get("/programs/rag").json()
    assert response.status_code == 201, response.text
    assert response.json()["version"] == registered.json()["version"] == 1
    assert shown["spec"]["modules"]["r"]["corpus"] == str(workdir / "corpora" / "facts.txt")
    assert "metadata" not in shown["spec"]

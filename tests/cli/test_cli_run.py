"""``dspex run PROGRAM`` through Typer's CliRunner: inputs, outputs and every exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import BROKEN_BACKEND_CONFIG, cli, register_ready, run_ok

from dspex.cli.run import input_is_text

RESULT_KEYS = {
    "execution_id",
    "program",
    "program_version",
    "status",
    "outputs",
    "error",
    "duration_ms",
    "usage",
    "steps",
    "attempts",
    "cost_usd",
}


def recorded_inputs(execution_id: str) -> dict[str, object]:
    data: dict[str, object] = cli("executions", "show", execution_id, "--json").json()["inputs"]
    return data


def test_run_completes_and_prints_outputs_status_and_execution_id(workdir: Path) -> None:
    register_ready()
    outcome = cli("run", "triage", "-i", "ticket=printer on fire", "-i", "priority=1")
    assert outcome.code == 0
    for text in ("Outputs", "summary", "team", "urgent", "completed", "execution:"):
        assert text in outcome.out


def test_run_json_prints_exactly_the_execution_result_keys(workdir: Path) -> None:
    register_ready()
    data = run_ok()
    assert set(data) == RESULT_KEYS
    assert data["status"] == "completed"
    assert set(data["outputs"]) == {"summary", "team", "urgent"}
    assert sorted(s["module"] for s in data["steps"]) == ["flag", "route", "summarize"]


def test_non_string_inputs_are_parsed_as_json(workdir: Path) -> None:
    register_ready()
    data = run_ok(ticket="x", priority="3")
    assert recorded_inputs(data["execution_id"])["priority"] == 3


def test_string_inputs_keep_the_raw_text_even_when_it_looks_like_json(workdir: Path) -> None:
    register_ready()
    data = run_ok(ticket="42", priority="1")
    assert recorded_inputs(data["execution_id"])["ticket"] == "42"


def test_a_value_of_the_wrong_type_exits_two_naming_the_field(workdir: Path) -> None:
    register_ready()
    outcome = cli("run", "triage", "-i", "ticket=x", "-i", "priority=high")
    assert outcome.code == 2
    assert outcome.err.startswith("error:")
    assert any(line.strip().startswith("priority:") for line in outcome.err.splitlines()[1:])
    assert "Traceback" not in outcome.err


def test_bad_inputs_are_reported_as_json_and_nothing_is_recorded(workdir: Path) -> None:
    register_ready()
    outcome = cli("run", "triage", "-i", "priority=high", "--json")
    error = outcome.json()["error"]
    assert outcome.code == 2
    assert error["code"] == "validation_error"
    assert {e["field"] for e in error["errors"]} >= {"priority", "ticket"}
    assert cli("executions", "list", "--json").json()["items"] == []


def test_an_input_without_equals_sign_exits_two(workdir: Path) -> None:
    register_ready()
    outcome = cli("run", "triage", "-i", "ticket")
    assert outcome.code == 2
    assert "key=value" in outcome.err


def test_input_json_supplies_inputs_and_i_overrides_its_keys(workdir: Path) -> None:
    register_ready()
    outcome = cli(
        "run",
        "triage",
        "--input-json",
        json.dumps({"ticket": "from json", "priority": 5}),
        "-i",
        "priority=9",
        "--json",
    )
    assert outcome.code == 0
    assert recorded_inputs(outcome.json()["execution_id"]) == {"ticket": "from json", "priority": 9}


def test_input_json_reads_a_file_after_an_at_sign(workdir: Path) -> None:
    register_ready()
    (workdir / "in.json").write_text(json.dumps({"ticket": "from file", "priority": 2}))
    outcome = cli("run", "triage", "--input-json", "@in.json", "--json")
    assert outcome.code == 0
    assert recorded_inputs(outcome.json()["execution_id"])["ticket"] == "from file"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ("{oops", "not valid JSON"),
        ("@missing.json", "cannot read"),
    ],
)
def test_unusable_input_json_exits_two(workdir: Path, value: str, message: str) -> None:
    register_ready()
    outcome = cli("run", "triage", "--input-json", value)
    assert outcome.code == 2
    assert message in outcome.err


def test_unusable_input_json_with_json_flag_prints_an_error_object(workdir: Path) -> None:
    outcome = cli("run", "triage", "--input-json", "[]", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "bad_arguments"


def test_an_unknown_program_exits_two(workdir: Path) -> None:
    outcome = cli("run", "nope", "-i", "ticket=x")
    assert outcome.code == 2
    assert outcome.err.startswith("error:")
    assert "nope" in outcome.err


def test_a_program_that_is_not_ready_exits_two_naming_its_status(workdir: Path) -> None:
    cli("program", "register", "program.yaml")
    outcome = cli("run", "triage", "-i", "ticket=x", "-i", "priority=1", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "program_state"
    assert "draft" in outcome.json()["error"]["message"]


def test_an_unknown_strategy_exits_two(workdir: Path) -> None:
    outcome = cli("run", "triage", "--strategy", "fastest")
    assert outcome.code == 2
    assert "unknown strategy" in outcome.err


def test_an_unknown_backend_exits_two(workdir: Path) -> None:
    register_ready()
    outcome = cli("run", "triage", "-i", "ticket=x", "-i", "priority=1", "--backend", "nowhere")
    assert outcome.code == 2
    assert "nowhere" in outcome.err


def test_a_failed_execution_exits_one_prints_its_code_and_is_recorded(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(BROKEN_BACKEND_CONFIG)
    register_ready()
    outcome = cli("run", "triage", "-i", "ticket=x", "-i", "priority=1", "--backend", "broken")
    assert outcome.code == 1
    assert "failed" in outcome.out
    assert outcome.err.startswith("error:")
    listed = cli("executions", "list", "--json").json()["items"]
    assert [item["status"] for item in listed] == ["failed"]
    assert listed[0]["error_code"] in outcome.err


def test_a_failed_execution_with_json_prints_the_result_with_its_error(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(BROKEN_BACKEND_CONFIG)
    register_ready()
    outcome = cli(
        "run", "triage", "-i", "ticket=x", "-i", "priority=1", "--backend", "broken", "--json"
    )
    data = outcome.json()
    assert outcome.code == 1
    assert data["status"] == "failed"
    assert set(data["error"]) == {"code", "message", "module"}


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        ({"type": "string"}, True),
        ({"type": "string", "enum": ["a", "b"]}, True),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, True),
        ({"type": "integer"}, False),
        ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, False),
        ({"anyOf": [{"type": "null"}]}, False),
        ({"type": "array", "items": {"type": "string"}}, False),
    ],
)
def test_only_string_only_fields_take_the_raw_text(schema: dict[str, object], text: bool) -> None:
    assert input_is_text(schema) is text


def test_the_bundled_qa_example_registers_and_runs(workdir: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "qa" / "program.yaml"
    assert cli("program", "register", str(example), "--init").code == 0
    outcome = cli(
        "run", "qa", "-i", "question=Why is the sky blue?", "-i", "max_words=60", "--json"
    )
    assert outcome.code == 0
    assert set(outcome.json()["outputs"]) == {"answer", "topic", "keywords", "confidence"}

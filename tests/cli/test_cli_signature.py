"""``dspex signature validate`` and ``dspex signature schema`` through Typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from dspex.cli import app

GOOD = "question: str 'the user question', k: int -> answer: str, confidence: probability"
runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_validate_exits_zero_for_a_valid_signature_and_prints_a_table() -> None:
    code, out, _ = run("signature", "validate", GOOD)
    assert code == 0
    assert "valid" in out
    assert "constraints" in out


def test_validate_exits_one_and_lists_problems_for_an_invalid_signature() -> None:
    code, out, _ = run("signature", "validate", "class: int -> items")
    assert code == 1
    assert "keyword_name" in out
    assert "reserved_name" in out


def test_validate_json_prints_exactly_the_report_keys() -> None:
    code, out, _ = run("signature", "validate", "a: foo -> b", "--json")
    data = json.loads(out)
    assert code == 1
    assert set(data) == {"valid", "level", "steps", "problems"}
    assert data["valid"] is False
    assert data["problems"][0]["code"] == "unknown_type"


def test_validate_deep_json_includes_complexity_and_cost() -> None:
    code, out, _ = run("signature", "validate", GOOD, "--level", "deep", "--json")
    data = json.loads(out)
    assert code == 0
    assert set(data) == {"valid", "level", "steps", "problems", "complexity", "cost_estimate"}


def test_validate_deep_human_output_shows_complexity_and_tokens() -> None:
    code, out, _ = run("signature", "validate", GOOD, "--level", "deep")
    assert code == 0
    assert "Complexity" in out
    assert "tokens" in out


def test_an_unknown_level_exits_two_without_a_stack_trace() -> None:
    code, out, err = run("signature", "validate", GOOD, "--level", "thorough")
    assert code == 2
    assert "unknown level" in err
    assert "Traceback" not in out + err


def test_validate_reads_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "sig.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "QA", "inputs": {"q": "str"}, "outputs": {"a": {"type": "int", "minimum": 0}}}
        )
    )
    code, out, _ = run("signature", "validate", str(path), "--json")
    assert code == 0
    assert json.loads(out)["valid"] is True


def test_validate_reads_the_signature_inside_a_program_file(tmp_path: Path) -> None:
    path = tmp_path / "program.yaml"
    path.write_text(
        yaml.safe_dump({"name": "rag", "signature": {"signature": "q -> a"}, "modules": {}})
    )
    assert run("signature", "validate", str(path))[0] == 0


def test_validate_reads_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "sig.json"
    path.write_text(json.dumps({"signature": "q -> a: items_type"}))
    assert run("signature", "validate", str(path))[0] == 1


@pytest.mark.parametrize("name", ["missing.yaml", "dir/missing"])
def test_a_missing_file_exits_two(tmp_path: Path, name: str) -> None:
    code, _, err = run("signature", "validate", str(tmp_path / name))
    assert code == 2
    assert "does not exist" in err


def test_a_directory_exits_two(tmp_path: Path) -> None:
    assert run("signature", "validate", str(tmp_path))[0] == 2


def test_malformed_yaml_exits_two(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("inputs: [unclosed")
    code, _, err = run("signature", "validate", str(path))
    assert code == 2
    assert "not valid YAML" in err


def test_yaml_aliases_in_a_signature_file_are_refused_before_they_expand(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    path.write_text("\n".join(lines) + "\n")
    code, _, err = run("signature", "validate", str(path))
    assert code == 2
    assert "alias" in err


def test_a_json_signature_file_nested_past_the_parser_exits_two(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    code, _, err = run("signature", "validate", str(path))
    assert code == 2
    assert "too deep" in err


def test_a_file_that_is_not_a_signature_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    assert run("signature", "validate", str(path))[0] == 1
    assert run("signature", "schema", str(path))[0] == 1


@pytest.mark.parametrize("target", ["json_schema", "openai", "anthropic"])
def test_schema_prints_a_valid_schema_for_each_target(target: str) -> None:
    code, out, _ = run("signature", "schema", GOOD, "--target", target)
    assert code == 0
    data = json.loads(out)
    body = {
        "openai": lambda d: d["function"]["parameters"],
        "anthropic": lambda d: d["input_schema"],
    }.get(target, lambda d: d)(data)
    jsonschema.Draft202012Validator.check_schema(body)
    assert set(body["properties"]) == {"answer", "confidence"}


def test_schema_can_describe_the_inputs() -> None:
    code, out, _ = run("signature", "schema", GOOD, "--part", "inputs")
    assert code == 0
    assert set(json.loads(out)["properties"]) == {"question", "k"}


def test_schema_of_an_invalid_signature_exits_one_with_the_problems() -> None:
    code, _, err = run("signature", "schema", "a: foo -> b")
    assert code == 1
    assert "unknown type" in err


def test_schema_with_an_unknown_target_exits_two() -> None:
    assert run("signature", "schema", GOOD, "--target", "xml")[0] == 2


def test_schema_reads_a_structured_file(tmp_path: Path) -> None:
    path = tmp_path / "sig.yml"
    path.write_text(yaml.safe_dump({"inputs": {"q": "str"}, "outputs": {"a": "list[int]"}}))
    code, out, _ = run("signature", "schema", str(path))
    assert code == 0
    assert json.loads(out)["properties"]["a"]["type"] == "array"


def test_importing_the_cli_does_not_import_dspy() -> None:
    code = (
        "import sys, dspex.cli; assert 'dspy' not in sys.modules and 'litellm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_the_signature_group() -> None:
    code, out, _ = run("--help")
    assert code == 0
    assert "signature" in out


def test_validate_shows_the_checks_after_a_failed_parse_as_not_run() -> None:
    code, out, _ = run("signature", "validate", "question: str -> -> answer")
    assert code == 1
    assert "not run" in out
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in out.splitlines()
        if line.startswith("│") and line.count("│") == 4
    }
    assert rows["parse"] == "no"
    assert all(rows[name] == "not run" for name in ("structure", "names", "types", "constraints"))
    assert "not_run" not in out  # the problems table lists only real problems

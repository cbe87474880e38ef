"""Reading a spec is bounded work: no YAML aliases, no nesting past ``MAX_SPEC_DEPTH``.

The same reader serves ``Program.from_file`` (so ``dspex program register``) and
``Program.from_yaml`` (the HTTP service's YAML bodies).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dspex.cli import app
from dspex.engine.program import Program
from dspex.engine.spec import MAX_SPEC_DEPTH
from dspex.errors import SpecError

HEAD = """\
name: qa
signature: "question: str -> answer: str"
modules:
  answer:
    kind: predict
    signature: "question: str -> answer: str"
"""


def alias_bomb(levels: int = 5, width: int = 9) -> str:
    """A spec whose ``metadata`` grows ``width`` times per level through aliases."""
    lines = [HEAD + "metadata:", "  l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"  l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def nested_config(depth: int) -> dict[str, Any]:
    """The qa spec with ``modules.answer.config`` making the whole spec ``depth`` levels deep."""
    value: Any = 1
    for _ in range(depth - 3):  # spec, modules and answer are the first three levels
        value = {"k": value}
    spec = yaml.safe_load(HEAD)
    spec["modules"]["answer"]["config"] = value
    return dict(spec)


def codes(info: pytest.ExceptionInfo[SpecError]) -> list[str]:
    return [e.code for e in info.value.errors]


def test_a_plain_yaml_spec_loads() -> None:
    assert Program.from_yaml(HEAD).name == "qa"


def test_an_anchor_without_an_alias_is_harmless_and_accepted() -> None:
    program = Program.from_yaml(HEAD + "metadata:\n  team: &team search\n")
    assert program.to_dict()["metadata"] == {"team": "search"}


def test_yaml_aliases_are_refused_before_they_expand() -> None:
    with pytest.raises(SpecError) as info:
        Program.from_yaml(alias_bomb())
    assert codes(info) == ["yaml_alias"]
    assert "line 9" in info.value.errors[0].message  # the first alias, where it is written


def test_a_merge_key_alias_is_refused() -> None:
    text = """\
name: qa
signature: "question: str -> answer: str"
metadata:
  base: &base {kind: predict, signature: "question: str -> answer: str"}
modules:
  answer:
    <<: *base
"""
    with pytest.raises(SpecError) as info:
        Program.from_yaml(text)
    assert codes(info) == ["yaml_alias"]


def test_yaml_that_does_not_parse_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as info:
        Program.from_yaml("name: [qa")
    assert codes(info) == ["yaml_invalid"]


def test_yaml_nested_thousands_deep_is_refused_without_recursing() -> None:
    text = HEAD + "metadata:\n  x: " + "[" * 5000 + "]" * 5000 + "\n"
    with pytest.raises(SpecError) as info:
        Program.from_yaml(text)
    assert codes(info) == ["too_deep"]


def test_a_spec_may_nest_up_to_the_limit() -> None:
    assert Program.from_dict(nested_config(MAX_SPEC_DEPTH)).name == "qa"


def test_a_yaml_spec_may_nest_up_to_the_limit_too() -> None:
    assert Program.from_yaml(yaml.safe_dump(nested_config(MAX_SPEC_DEPTH))).name == "qa"
    with pytest.raises(SpecError) as info:
        Program.from_yaml(yaml.safe_dump(nested_config(MAX_SPEC_DEPTH + 1)))
    assert codes(info) == ["too_deep"]


def test_a_spec_nested_past_the_limit_is_too_deep() -> None:
    with pytest.raises(SpecError) as info:
        Program.from_dict(nested_config(MAX_SPEC_DEPTH + 1))
    assert codes(info) == ["too_deep"]


def test_a_json_file_nested_past_the_parser_limit_is_too_deep(tmp_path: Path) -> None:
    spec = nested_config(8)
    text = json.dumps(spec).replace("1}", "[" * 5000 + "]" * 5000 + "}", 1)
    file = tmp_path / "deep.json"
    file.write_text(text)
    with pytest.raises(SpecError) as info:
        Program.from_file(file)
    assert codes(info) == ["too_deep"]


def test_a_yaml_file_with_aliases_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "bomb.yaml"
    file.write_text(alias_bomb())
    with pytest.raises(SpecError) as info:
        Program.from_file(file)
    assert codes(info) == ["yaml_alias"]
    assert str(file) in info.value.message


def test_program_register_refuses_an_alias_bomb_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DSPEX_CONFIG", "DSPEX_DATABASE_URL", "DSPEX_DEFAULT_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    result = CliRunner().invoke(app, ["program", "register", "bomb.yaml", "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["error"]["code"] == "spec_invalid"
    assert "Traceback" not in result.output
    assert not (tmp_path / ".dspex").exists()  # refused before the database was touched

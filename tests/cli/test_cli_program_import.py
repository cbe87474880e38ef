"""``dspex program import pkg.mod:Class``: a program around a DSPy module you already have."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import cli
from tests.engine.dspy_native_modules import REF, bootstrapped_qa


@pytest.fixture
def allowed(workdir: Path) -> Path:
    """The working directory, with the test modules allow-listed in its dspex.toml."""
    (workdir / "dspex.toml").write_text(f'allowed_imports = ["{REF}"]\n')
    return workdir


def test_import_stores_the_state_inline_and_show_prints_its_demos(allowed: Path) -> None:
    bootstrapped_qa(prefix="Q: ").save(str(allowed / "qa.json"))
    outcome = cli(
        "program", "import", f"{REF}:QA", "--name", "qa", "--state", "qa.json",
        "--init-json", '{"prefix": "Q: "}', "--json",
    )  # fmt: skip
    assert outcome.code == 0, outcome.err
    assert (outcome.json()["name"], outcome.json()["version"]) == ("qa", 1)

    (allowed / "qa.json").unlink()  # the version does not need the file any more
    shown = cli("program", "show", "qa", "--version", "1", "--json")
    assert shown.code == 0, shown.err
    module = shown.json()["spec"]["modules"]["qa"]
    assert (module["kind"], module["module"], module["init"]) == (
        "dspy",
        f"{REF}:QA",
        {"prefix": "Q: "},
    )
    demos = module["state"]["answer.predict"]["demos"]
    assert [d["answer"] for d in demos] == ["train answer 0", "train answer 1"]
    assert shown.json()["spec"]["signature"] == "question: str -> answer: str"

    human = cli("program", "show", "qa", "--version", "1")
    assert human.code == 0, human.err
    assert "qa carries a saved state (1 predictors, 2 demos)" in human.out


def test_import_with_init_leaves_the_program_ready(allowed: Path) -> None:
    outcome = cli("program", "import", f"{REF}:QA", "--name", "qa", "--init")
    assert outcome.code == 0, outcome.err
    assert "ready" in outcome.out
    assert f"{REF}:QA" in outcome.out


def test_a_disallowed_import_is_one_line_naming_the_entry_that_permits_it(workdir: Path) -> None:
    outcome = cli("program", "import", f"{REF}:QA", "--name", "qa")
    assert outcome.code == 2
    assert outcome.err.strip().splitlines() == [
        f"error: '{REF}:QA' is not in allowed_imports: add \"{REF}\" to allowed_imports in"
        " dspex.toml (or DSPEX_ALLOWED_IMPORTS)"
    ]
    assert cli("program", "list", "--json").json() == []


def test_several_predictors_need_the_signature_option(allowed: Path) -> None:
    refused = cli("program", "import", f"{REF}:TwoSteps", "--name", "two")
    assert refused.code == 2
    assert "--signature" in refused.err
    assert "Traceback" not in refused.err
    given = cli(
        "program", "import", f"{REF}:TwoSteps", "--name", "two",
        "--signature", "question: str -> answer: str", "--json",
    )  # fmt: skip
    assert given.code == 0, given.err


@pytest.mark.parametrize(
    ("init_json", "message"),
    [("{nope", "--init-json is not JSON"), ("[1, 2]", "--init-json must be a JSON object")],
)
def test_init_json_that_is_not_a_json_object_exits_two(
    allowed: Path, init_json: str, message: str
) -> None:
    outcome = cli("program", "import", f"{REF}:QA", "--name", "qa", "--init-json", init_json)
    assert outcome.code == 2
    assert message in outcome.err


def test_a_state_saved_from_a_differently_built_module_exits_two(allowed: Path) -> None:
    bootstrapped_qa().save(str(allowed / "qa.json"))  # QA(reasoning=True): answer.predict
    outcome = cli(
        "program", "import", f"{REF}:QA", "--name", "qa", "--state", "qa.json",
        "--init-json", json.dumps({"reasoning": False}), "--json",
    )  # fmt: skip
    assert outcome.code == 2
    error = outcome.json()["error"]
    assert error["code"] == "spec_invalid"
    assert error["errors"][0]["code"] == "state_mismatch"


def test_a_module_that_cannot_be_imported_says_where_to_look(allowed: Path) -> None:
    (allowed / "dspex.toml").write_text('allowed_imports = ["cli_import_nowhere"]\n')
    outcome = cli("program", "import", "cli_import_nowhere:QA", "--name", "qa")
    assert outcome.code == 2
    assert "PYTHONPATH" in outcome.err


@pytest.mark.slow
def test_the_dspy_native_example_optimizes_imports_and_runs_a_batch_offline(
    tmp_path: Path,
) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "dspy_native" / "run.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSPEX_")}
    done = subprocess.run(
        [sys.executable, str(example), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported rag:RAG as rag v1: ready" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["status"] for r in rows] == ["completed"] * 6
    assert rows[0]["outputs"] == {"answer": "Paris"}
    stored = json.loads((tmp_path / "rag.json").read_text())
    assert len(stored["generate.predict"]["demos"]) == 2  # what BootstrapFewShot found

"""``dspex evaluate``, ``dspex program promote`` and ``dspex dataset export`` through CliRunner.

The program is one ``python`` module answering from a table: version 1 calls ``bad`` (always
"wrong"), version 2 calls ``good``; so v2 scores 1.0 and v1 0.0 on the devset.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cli_support import cli

MODULE = "cli_eval_qa"
CODE = """
TABLE = {"capital of France": "Paris", "2 + 2": "4", "colour of the sky": "blue"}

def good(question):
    return {"answer": TABLE[question]}

def bad(question):
    return {"answer": "wrong"}

def first_letter(example, prediction, trace=None):
    return example.answer[0].lower() == prediction.answer[0].lower()
"""
ROWS = [
    {"question": "capital of France", "answer": "Paris"},
    {"question": "2 + 2", "answer": "4"},
    {"question": "colour of the sky", "answer": "Blue"},
]
EVALUATION_KEYS = {"program", "version", "metric", "score", "n", "failed", "batch_id"}


def spec(function: str) -> dict[str, object]:
    return {
        "name": "qa",
        "signature": "question: str -> answer: str",
        "modules": {
            "answer": {
                "kind": "python",
                "function": f"{MODULE}:{function}",
                "signature": "question: str -> answer: str",
                "inputs": {"question": "$input.question"},
            }
        },
    }


@pytest.fixture
def qa(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (workdir / f"{MODULE}.py").write_text(CODE)
    monkeypatch.syspath_prepend(str(workdir))
    (workdir / "dspex.toml").write_text(f'allowed_imports = ["{MODULE}"]\n')
    for version, function in ((1, "bad"), (2, "good")):
        (workdir / f"v{version}.yaml").write_text(yaml.safe_dump(spec(function)))
        outcome = cli("program", "register", f"v{version}.yaml", "--init")
        assert outcome.code == 0, outcome.err
    (workdir / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    yield workdir
    sys.modules.pop(MODULE, None)


def test_evaluate_prints_the_score_as_json(qa: Path) -> None:
    outcome = cli(
        "evaluate", "qa", "dev.jsonl", "--metric", "exact_match", "--out", "items.jsonl", "--json"
    )
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert set(data) >= EVALUATION_KEYS
    assert (data["program"], data["version"], data["metric"]) == ("qa", 2, "exact_match")
    assert (data["score"], data["n"], data["failed"]) == (1.0, 3, 0)
    assert f"evaluation batch {data['batch_id']} started" in outcome.err
    lines = [json.loads(x) for x in (qa / "items.jsonl").read_text().splitlines()]
    assert [line["score"] for line in lines] == [1.0, 1.0, 1.0]


def test_evaluate_for_people_shows_a_table(qa: Path) -> None:
    outcome = cli("evaluate", "qa", "dev.jsonl", "--metric", "f1", "--version", "1")
    assert outcome.code == 0, outcome.err
    assert "Evaluation of qa v1" in outcome.out
    assert "0.0000" in outcome.out


def test_an_allow_listed_metric_function_is_used(qa: Path) -> None:
    outcome = cli("evaluate", "qa", "dev.jsonl", "--metric", f"{MODULE}:first_letter", "--json")
    assert outcome.code == 0, outcome.err
    assert outcome.json()["score"] == 1.0


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        ("accuracy", "unknown metric 'accuracy': use one of answer_exact_match, contains"),
        ("os.path:join", 'add "os.path" to allowed_imports'),
    ],
)
def test_a_bad_metric_is_one_line_and_exit_two(qa: Path, metric: str, message: str) -> None:
    outcome = cli("evaluate", "qa", "dev.jsonl", "--metric", metric)
    assert outcome.code == 2
    assert message in outcome.err
    assert "Traceback" not in outcome.err


def test_a_missing_devset_is_a_usage_error(qa: Path) -> None:
    outcome = cli("evaluate", "qa", "nope.jsonl", "--metric", "f1", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "bad_arguments"


def test_resuming_a_finished_evaluation_reads_it_back(qa: Path) -> None:
    first = cli("evaluate", "qa", "dev.jsonl", "--metric", "exact_match", "--json").json()
    again = cli(
        "evaluate", "qa", "dev.jsonl", "--metric", "exact_match", "--resume", first["batch_id"][:12]
    )
    assert again.code == 0, again.err
    assert first["evaluation_id"] in again.out


def test_compare_reports_both_scores_and_the_interval(qa: Path) -> None:
    outcome = cli("evaluate", "qa", "dev.jsonl", "--metric", "exact_match", "--compare", "1", "2")
    assert outcome.code == 0, outcome.err
    assert "difference v2 - v1: +1.0000" in outcome.out
    data = cli(
        "evaluate", "qa", "dev.jsonl", "-m", "exact_match", "--compare", "1", "2", "--json"
    ).json()
    assert (data["a"]["score"], data["b"]["score"], data["difference"]) == (0.0, 1.0, 1.0)
    assert data["interval"] == [1.0, 1.0]


def test_the_gate_refuses_a_worse_version_with_exit_one(qa: Path) -> None:
    ok = cli("program", "promote", "qa", "--version", "2", "--devset", "dev.jsonl", "-m", "f1")
    assert ok.code == 0, ok.err
    assert "qa v2 is now current (was v1): f1 1.0000 vs 0.0000" in ok.out
    refused = cli("program", "promote", "qa", "--version", "1", "--devset", "dev.jsonl", "-m", "f1")
    assert refused.code == 1
    assert "scores 0.0000 on f1, below v2's 1.0000" in refused.err
    assert "Traceback" not in refused.err
    listed = cli("program", "list", "--all-versions", "--json").json()
    assert [(p["version"], p["current"]) for p in listed] == [(1, False), (2, True)]


def test_a_forced_rollback_is_recorded_and_shown(qa: Path) -> None:
    assert cli("program", "promote", "qa", "--version", "2", "--force", "--by", "ann").code == 0
    back = cli("program", "promote", "qa", "--version", "1", "--force", "--by", "bo", "--json")
    assert back.code == 0, back.err
    data = back.json()
    assert (data["version"], data["previous_version"], data["forced"]) == (1, 2, True)
    run = cli("run", "qa", "-i", "question=2 + 2", "--json").json()
    assert run["outputs"] == {"answer": "wrong"}  # v1 is what runs now
    shown = cli("program", "show", "qa", "--json").json()
    assert shown["current_version"] == 1
    assert [(p["version"], p["promoted_by"]) for p in shown["promotions"]] == [
        (1, "bo"),
        (2, "ann"),
    ]
    text = cli("program", "show", "qa", "--version", "1").out
    assert "Current version: v1" in text
    assert "promoted v1 (from v2) by bo" in text


def test_promote_without_a_devset_or_force_is_a_usage_error(qa: Path) -> None:
    outcome = cli("program", "promote", "qa", "--version", "2")
    assert outcome.code == 2
    assert "needs a devset and a metric" in outcome.err


def test_program_show_lists_the_recorded_scores(qa: Path) -> None:
    cli("evaluate", "qa", "dev.jsonl", "--metric", "exact_match")
    shown = cli("program", "show", "qa", "--json").json()
    assert [(e["metric"], e["score"]) for e in shown["evaluations"]] == [("exact_match", 1.0)]
    assert "Scores of v2" in cli("program", "show", "qa").out


def test_dataset_export_streams_examples_to_stdout_or_a_file(qa: Path) -> None:
    for question in ("2 + 2", "capital of France"):
        assert cli("run", "qa", "-i", f"question={question}").code == 0
    outcome = cli("dataset", "export", "qa")
    assert outcome.code == 0, outcome.err
    lines = [json.loads(x) for x in outcome.out.splitlines()]
    assert {(x["question"], x["answer"]) for x in lines} == {
        ("2 + 2", "4"),
        ("capital of France", "Paris"),
    }
    assert "exported 2 completed executions of qa" in outcome.err
    saved = cli("dataset", "export", "qa", "--limit", "1", "--out", "ex.jsonl", "--json")
    assert saved.json()["count"] == 1
    assert len((qa / "ex.jsonl").read_text().splitlines()) == 1
    bad = cli("dataset", "export", "qa", "--status", "running")
    assert bad.code == 2
    assert "completed, failed or all" in bad.err
    assert cli("dataset", "export", "qa", "--json").code == 2

"""``dspex batch``: JSONL in, ordered results out, exit codes, JSON output, resume."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import cli, register_ready


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _tickets(n: int) -> list[str]:
    return [json.dumps({"ticket": f"ticket {i}", "priority": i % 3}) for i in range(n)]


def test_batch_writes_one_line_per_item_in_input_order(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(6))
    outcome = cli("batch", "triage", "in.jsonl", "--out", "out.jsonl", "--json")
    assert outcome.code == 0, outcome.err
    lines = [json.loads(x) for x in (workdir / "out.jsonl").read_text().splitlines()]
    assert [(x["index"], x["status"]) for x in lines] == [(i, "completed") for i in range(6)]
    assert set(lines[0]["outputs"]) == {"summary", "team", "urgent"}


def test_batch_json_reports_the_statistics(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(3))
    data = cli("batch", "triage", "in.jsonl", "--json").json()
    assert data["status"] == "completed"
    assert data["stats"]["completed"] == 3
    assert {"batch_id", "stats", "stop_reason"} <= set(data)


def test_a_malformed_line_is_reported_with_its_line_number(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", [*_tickets(2), "{not json", *_tickets(1)])
    outcome = cli("batch", "triage", "in.jsonl", "--json")
    assert outcome.code == 2
    error = outcome.json()["error"]
    assert error["code"] == "validation_error"
    assert "line 3" in error["errors"][0]["message"]


def test_per_item_validation_fails_the_line_and_exits_one(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", [*_tickets(1), "[1, 2]"])
    outcome = cli(
        "batch", "triage", "in.jsonl", "--validate", "per_item", "--out", "o.jsonl", "--json"
    )
    assert outcome.code == 1
    last = json.loads((workdir / "o.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "failed"
    assert last["error"]["code"] == "validation_error"


def test_resume_reruns_nothing_when_everything_completed(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(4))
    first = cli("batch", "triage", "in.jsonl", "--json").json()
    again = cli("batch", "triage", "in.jsonl", "--resume", first["batch_id"], "--json").json()
    assert again["batch_id"] == first["batch_id"]
    assert again["stats"]["skipped"] == 4
    assert again["stats"]["ran"] == 0


def test_human_output_shows_the_statistics_table(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(2))
    outcome = cli("batch", "triage", "in.jsonl")
    assert outcome.code == 0
    assert "throughput" in outcome.out
    assert "batch:" in outcome.out


def test_a_missing_input_file_is_a_usage_error(workdir: Path) -> None:
    register_ready()
    assert cli("batch", "triage", "nope.jsonl").code == 2


def test_bad_workers_value_is_a_usage_error(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(1))
    assert cli("batch", "triage", "in.jsonl", "--workers", "many").code == 2


def test_an_unknown_program_is_a_usage_error(workdir: Path) -> None:
    _write(workdir / "in.jsonl", _tickets(1))
    outcome = cli("batch", "nope", "in.jsonl", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "not_found"

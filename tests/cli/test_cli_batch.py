"""``dspex batch``: JSONL in, ordered results out, exit codes, JSON output, resume; the batch
id and the exact resume command whenever a batch starts or ends early."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from cli_support import cli, register_ready, shared_prefix


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


def _broken_backend(workdir: Path) -> None:
    # Slow enough that the first failure is recorded (and stops the batch) long before the
    # last of the items could have run one at a time: one attempt per module, and no breaker
    # (an open circuit fails the later items at once).
    (workdir / "dspex.toml").write_text(
        '[backends.default]\nkind = "mock"\n\n'
        '[backends.broken]\nkind = "mock"\nfailure_rate = 1.0\nlatency_ms = 100\n\n'
        "[defaults]\nbreakers = false\n[defaults.retry]\nmax_attempts = 1\n"
    )


def test_the_batch_id_and_its_resume_command_are_printed_on_stderr_when_it_starts(
    workdir: Path,
) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(2))
    outcome = cli("batch", "triage", "in.jsonl", "--out", "o.jsonl", "-c", "4", "--json")
    assert outcome.code == 0, outcome.err
    batch_id = outcome.json()["batch_id"]
    assert outcome.err.splitlines() == [
        f"batch {batch_id} started; if it stops early, resume it with: dspex batch triage"
        f" in.jsonl --resume {batch_id} --out o.jsonl --concurrency 4"
    ]
    assert outcome.json()["resume_command"] is None


def test_a_line_that_is_not_utf8_is_a_usage_error_naming_its_line(workdir: Path) -> None:
    register_ready()
    (workdir / "in.jsonl").write_bytes(b'{"ticket": "a", "priority": 1}\n{"ticket": "\xff"}\n')
    outcome = cli("batch", "triage", "in.jsonl", "--json")
    assert outcome.code == 2
    error = outcome.json()["error"]
    assert error["code"] == "validation_error"
    assert error["errors"][0]["message"].startswith("line 2: not valid UTF-8")
    assert "started" not in outcome.err


def test_a_line_of_no_break_spaces_fails_as_an_item_and_the_batch_still_completes(
    workdir: Path,
) -> None:
    register_ready()
    (workdir / "in.jsonl").write_bytes(
        b'{"ticket": "a", "priority": 1}\n\xc2\xa0\n{"ticket": "b", "priority": 2}\n'
    )
    outcome = cli("batch", "triage", "in.jsonl", "--validate", "per_item", "--json")
    assert outcome.code == 1
    data = outcome.json()
    assert data["status"] == "completed"
    assert (data["stats"]["total"], data["stats"]["completed"], data["stats"]["failed"]) == (
        3,
        2,
        1,
    )


def test_an_out_file_that_cannot_be_written_is_refused_before_the_batch_starts(
    workdir: Path,
) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(2))
    outcome = cli("batch", "triage", "in.jsonl", "--out", "missing/o.jsonl", "--json")
    assert outcome.code == 2
    error = outcome.json()["error"]
    assert [(e["field"], e["code"]) for e in error["errors"]] == [("out", "unwritable")]
    assert "started" not in outcome.err
    assert cli("batches", "list", "--json").json()["items"] == []


def test_a_batch_stopped_by_max_errors_names_its_id_and_the_exact_resume_command(
    workdir: Path,
) -> None:
    _broken_backend(workdir)
    register_ready()
    _write(workdir / "in.jsonl", _tickets(8))
    args = ("batch", "triage", "in.jsonl", "--out", "o.jsonl", "-c", "1", "--backend", "broken")
    outcome = cli(*args, "--max-errors", "0", "--max-retries", "0", "--json")
    assert outcome.code == 1
    error = outcome.json()["error"]
    assert error["code"] == "batch_max_errors"
    batch_id = error["batch_id"]
    assert error["resume_command"] == (
        f"dspex batch triage in.jsonl --resume {batch_id} --out o.jsonl --concurrency 1"
        " --max-retries 0 --max-errors 0 --backend broken"
    )
    human = cli(*args, "--fail-fast")
    assert human.code == 1
    stopped = human.err.splitlines()[-1]
    assert stopped.startswith("batch ")
    assert stopped.endswith("--out o.jsonl --concurrency 1 --fail-fast --backend broken")
    assert "stopped early; resume it with: dspex batch triage in.jsonl --resume" in stopped


def test_the_printed_resume_command_resumes_the_same_batch(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", [*_tickets(2), "[1]"])
    first = cli("batch", "triage", "in.jsonl", "--validate", "per_item", "-o", "o.jsonl", "--json")
    assert first.code == 1
    command = first.json()["resume_command"]
    assert command is not None
    again = cli(*shlex.split(command)[1:], "--json")
    assert again.code == 1
    data = again.json()
    assert data["batch_id"] == first.json()["batch_id"]
    assert (data["stats"]["skipped"], data["stats"]["ran"]) == (2, 1)
    assert len((workdir / "o.jsonl").read_text().splitlines()) == 3


def test_human_output_of_an_incomplete_batch_ends_with_the_resume_command(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", [*_tickets(1), "[1]"])
    outcome = cli("batch", "triage", "in.jsonl", "--validate", "per_item")
    assert outcome.code == 1
    last = outcome.out.strip().splitlines()[-1]
    assert last.startswith("re-run what did not complete with: dspex batch triage in.jsonl")
    assert "--validate per_item" in last


def test_resume_takes_a_unique_prefix_of_the_batch_id(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(2))
    first = cli("batch", "triage", "in.jsonl", "--json").json()
    again = cli("batch", "triage", "in.jsonl", "--resume", first["batch_id"][:23], "--json")
    assert again.code == 0, again.err
    assert again.json()["batch_id"] == first["batch_id"]


def test_an_ambiguous_resume_prefix_lists_the_candidates_and_exits_two(workdir: Path) -> None:
    register_ready()
    _write(workdir / "in.jsonl", _tickets(1))
    ids = [cli("batch", "triage", "in.jsonl", "--json").json()["batch_id"] for _ in range(2)]
    prefix = shared_prefix(ids)
    outcome = cli("batch", "triage", "in.jsonl", "--resume", prefix)
    assert outcome.code == 2
    assert f"the id prefix {prefix!r} matches 2 batches" in outcome.err
    for batch_id in ids:
        assert batch_id in outcome.err

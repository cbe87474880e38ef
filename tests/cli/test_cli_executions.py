"""``dspex executions list|show`` through Typer's CliRunner."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import BROKEN_BACKEND_CONFIG, cli, register_ready, run_ok
from tests.support.openai_server import OpenAIServer, status

DETAIL_KEYS = {
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
    "inputs",
    "created_at",
    "started_at",
    "finished_at",
    "backend",
    "worker_id",
    "batch_id",
    "batch_index",
    "attempt_records",
}


def test_list_shows_every_execution(workdir: Path) -> None:
    register_ready()
    first, second = run_ok()["execution_id"], run_ok()["execution_id"]
    outcome = cli("executions", "list")
    assert outcome.code == 0
    assert first in outcome.out
    assert second in outcome.out
    assert "completed" in outcome.out


def test_list_with_nothing_recorded_says_so(workdir: Path) -> None:
    outcome = cli("executions", "list")
    assert outcome.code == 0
    assert "no executions" in outcome.out


def test_list_json_pages_with_a_cursor(workdir: Path) -> None:
    register_ready()
    ids = {run_ok()["execution_id"], run_ok()["execution_id"]}
    first = cli("executions", "list", "--limit", "1", "--json").json()
    assert set(first) == {"items", "next_cursor"}
    assert set(first["items"][0]) == {
        "execution_id",
        "program",
        "program_version",
        "status",
        "duration_ms",
        "created_at",
        "error_code",
    }
    second = cli("executions", "list", "--limit", "1", "--cursor", first["next_cursor"], "--json")
    assert {first["items"][0]["execution_id"], second.json()["items"][0]["execution_id"]} == ids


def test_list_prints_the_cursor_for_the_next_page(workdir: Path) -> None:
    register_ready()
    run_ok()
    run_ok()
    assert "--cursor" in cli("executions", "list", "--limit", "1").out


def test_list_filters_by_program_and_status(workdir: Path) -> None:
    register_ready()
    run_ok()
    assert len(cli("executions", "list", "--program", "triage", "--json").json()["items"]) == 1
    assert cli("executions", "list", "--program", "other", "--json").json()["items"] == []
    assert cli("executions", "list", "--status", "failed", "--json").json()["items"] == []


def test_list_with_an_unknown_status_exits_two(workdir: Path) -> None:
    outcome = cli("executions", "list", "--status", "exploded")
    assert outcome.code == 2
    assert "unknown status" in outcome.err


def test_show_prints_inputs_outputs_and_steps(workdir: Path) -> None:
    register_ready()
    execution_id = run_ok(ticket="disk full", priority="2")["execution_id"]
    outcome = cli("executions", "show", execution_id)
    assert outcome.code == 0
    for text in ("Inputs", "disk full", "Outputs", "Steps", "summarize", "route", "flag"):
        assert text in outcome.out


def test_show_json_prints_exactly_the_execution_detail_keys(workdir: Path) -> None:
    register_ready()
    execution_id = run_ok()["execution_id"]
    data = cli("executions", "show", execution_id, "--json").json()
    assert set(data) == DETAIL_KEYS
    assert data["execution_id"] == execution_id
    assert len(data["steps"]) == 3


def test_show_an_unknown_execution_exits_two(workdir: Path) -> None:
    outcome = cli("executions", "show", "no-such-id")
    assert outcome.code == 2
    assert outcome.err.startswith("error:")


def test_show_of_a_failed_execution_prints_the_failed_step_and_error(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(BROKEN_BACKEND_CONFIG)
    register_ready()
    ran = cli("run", "triage", "-i", "ticket=x", "-i", "priority=1", "-b", "broken", "--json")
    outcome = cli("executions", "show", ran.json()["execution_id"])
    assert outcome.code == 0
    assert "failed" in outcome.out
    assert f"error: {ran.json()['error']['code']}" in outcome.out


def test_show_prints_bracketed_user_text_as_it_was_written(workdir: Path) -> None:
    register_ready()
    question = "What does [bold] or [int] mean?"
    execution_id = run_ok(ticket=question, priority="2")["execution_id"]
    outcome = cli("executions", "show", execution_id)
    assert outcome.code == 0
    assert question in outcome.out


def test_an_unknown_status_with_brackets_is_quoted_as_given(workdir: Path) -> None:
    outcome = cli("executions", "list", "--status", "[bold]done")
    assert outcome.code == 2
    assert "'[bold]done'" in outcome.err


def test_show_names_the_batch_an_execution_belongs_to(workdir: Path) -> None:
    register_ready()
    (workdir / "items.jsonl").write_text('{"ticket": "a", "priority": 1}\n')
    batch = cli("batch", "triage", "items.jsonl", "--json")
    assert batch.code == 0, batch.err
    [item] = cli("executions", "list", "--json").json()["items"]
    outcome = cli("executions", "show", item["execution_id"])
    assert outcome.code == 0
    assert f"batch: {batch.json()['batch_id']} (item 0)" in outcome.out


KEY_ENV = "DSPEX_TEST_CLI_KEY"


@pytest.fixture
def loopback(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    """A loopback OpenAI-compatible server as the only backend, retried without waiting."""
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as server:
        (workdir / "dspex.toml").write_text(
            f"""
default_backend = "main"

[backends.openai]
kind = "dspy"
model = "openai/loopback-model"
api_base = "{server.base_url}"
api_key_env = "{KEY_ENV}"

[coordinators.main]
backends = ["openai"]

[coordinators.main.retry]
max_attempts = 4
initial_interval = 0
jitter = 0
max_retry_after = 0
"""
        )
        (workdir / "qa.yaml").write_text(
            "name: qa\n"
            'signature: "question: str -> answer: str"\n'
            "modules:\n"
            '  answer: {kind: predict, signature: "question: str -> answer: str"}\n'
        )
        assert cli("program", "register", "qa.yaml", "--init").code == 0
        yield server


def test_show_lists_each_attempt_with_backend_outcome_code_http_status_and_retry_after(
    loopback: OpenAIServer,
) -> None:
    loopback.script(status(429, retry_after=2), status(500))
    ran = cli("run", "qa", "-i", "question=What is 6 * 7?", "--json")
    assert ran.code == 0, ran.out + ran.err
    outcome = cli("executions", "show", ran.json()["execution_id"])
    assert outcome.code == 0
    assert "Attempts" in outcome.out
    duration = r"[\d.]+ m?s"
    for row in (
        rf"answer +1 +openai +failed +rate_limited +429 +2 s +{duration}",
        rf"answer +2 +openai +failed +backend_unavailable +500 +- +{duration}",
        rf"answer +3 +openai +succeeded +- +- +- +{duration}",
    ):
        assert re.search(rf"^\s*{row}\s*$", outcome.out, re.MULTILINE), (row, outcome.out)

"""Cost in the CLI: ``executions show``, batch statistics, ``batches show``, ``--max-cost`` and
``--estimate``. The mock backend's model is ``mock``; ``[prices.mock]`` gives it a price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_support import cli, register_ready, run_ok

PRICED = """
[backends.default]
kind = "mock"

[prices.mock]
input_cost_per_token = 0.001
output_cost_per_token = 0.002
"""


def _tickets(path: Path, count: int) -> None:
    lines = [json.dumps({"ticket": f"ticket {i}", "priority": i % 3}) for i in range(count)]
    path.write_text("".join(line + "\n" for line in lines))


def test_executions_show_prints_the_tokens_and_cost(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(PRICED)
    register_ready()
    ran = run_ok()
    assert ran["cost_usd"] > 0
    shown = cli("executions", "show", ran["execution_id"])
    assert shown.code == 0
    tokens = sum(c["total_tokens"] for c in ran["usage"].values())
    assert f"tokens: {tokens}  cost: ${ran['cost_usd']:.6g}" in shown.out
    assert "cost" in shown.out.split("Steps")[1]  # the steps table has a cost column


def test_batch_statistics_and_batches_show_report_the_cost(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(PRICED)
    register_ready()
    _tickets(workdir / "in.jsonl", 4)
    outcome = cli("batch", "triage", "in.jsonl", "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert data["stats"]["cost_usd"] > 0
    assert data["stats"]["rate_limited_s"] == 0.0
    shown = cli("batches", "show", data["batch_id"], "--json").json()
    assert shown["cost_usd"] == pytest.approx(data["stats"]["cost_usd"])
    human = cli("batch", "triage", "in.jsonl")
    assert "cost" in human.out
    assert "rate-limit waits" in human.out


def test_max_cost_stops_the_batch_and_prints_the_resume_command_with_it(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(PRICED)
    register_ready()
    _tickets(workdir / "in.jsonl", 20)
    outcome = cli("batch", "triage", "in.jsonl", "-c", "1", "--max-cost", "0.01", "--json")
    assert outcome.code == 1
    data = outcome.json()
    assert (data["status"], data["stop_reason"]) == ("cancelled", "max_cost")
    assert data["stats"]["completed"] < 20
    assert "--max-cost 0.01" in data["resume_command"]
    shown = cli("batches", "show", data["batch_id"])
    assert "(max $0.01 a run)" in shown.out
    assert "--max-cost 0.01" in shown.out


def test_a_non_positive_max_cost_is_a_usage_error(workdir: Path) -> None:
    register_ready()
    _tickets(workdir / "in.jsonl", 1)
    outcome = cli("batch", "triage", "in.jsonl", "--max-cost", "0")
    assert outcome.code == 2


def test_estimate_prints_tokens_and_cost_and_runs_nothing(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(PRICED)
    register_ready()
    _tickets(workdir / "in.jsonl", 5)
    outcome = cli("batch", "triage", "in.jsonl", "--estimate", "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()
    assert (data["items"], data["source"]) == (5, "prompt_estimate")
    assert data["cost_usd"] > 0
    assert data["tokens"] == 5 * data["tokens_per_item"]["mock"]["total_tokens"]
    assert cli("executions", "list", "--json").json()["items"] == []
    human = cli("batch", "triage", "in.jsonl", "--estimate")
    assert "prompt-token estimate" in human.out
    assert "cost per item" in human.out


def test_dollars_are_printed_for_people() -> None:
    from dspex.cli._common import format_usd

    assert [format_usd(v) for v in (None, 0.0, 0.000375, 12.34)] == [
        "-",
        "$0",
        "$0.000375",
        "$12.3400",
    ]

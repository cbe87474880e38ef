"""The response cache from the command line: ``--cache`` on ``run``, ``batch`` and
``evaluate``, ``dspex cache stats|clear``, hits in ``run`` and ``executions show``, the
``[cache]`` settings in ``config show``, and user mistakes (exit 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import cli, register_ready

PRICED = """
[backends.default]
kind = "mock"

[prices.mock]
input_cost_per_token = 0.001
output_cost_per_token = 0.002
"""

TICKET = ("-i", "ticket=printer is on fire", "-i", "priority=2")


def _run(*extra: str) -> dict[str, object]:
    outcome = cli("run", "triage", *TICKET, "--json", *extra)
    assert outcome.code == 0, outcome.err
    data: dict[str, object] = outcome.json()
    return data


def test_run_with_cache_answers_the_second_run_from_it(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(PRICED)
    register_ready()
    first = _run("--cache", "read_write")
    second = _run("--cache", "read_write")
    assert second["outputs"] == first["outputs"]
    steps = second["steps"]
    assert isinstance(steps, list)
    assert all(step["cache_hit"] for step in steps)
    assert all(step["cost_saved_usd"] > 0 for step in steps)
    human = cli("run", "triage", *TICKET, "--cache", "read_only")
    assert human.code == 0
    assert "cache: 3 of 3 modules answered from the response cache" in human.out
    shown = cli("executions", "show", str(second["execution_id"]))
    assert shown.code == 0
    assert "hit (saved $" in shown.out


def test_run_without_cache_does_not_use_it(workdir: Path) -> None:
    register_ready()
    _run()
    again = _run()
    steps = again["steps"]
    assert isinstance(steps, list)
    assert not any(step["cache_hit"] for step in steps)
    assert cli("cache", "stats", "--json").json()["entries"] == 0


def test_cache_stats_and_clear(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(PRICED)
    register_ready()
    _run("--cache", "read_write")
    _run("--cache", "read_write")
    stats = cli("cache", "stats", "--json")
    assert stats.code == 0
    data = stats.json()
    assert data["entries"] == 3
    assert data["expired"] == 0
    assert data["hits"] == 3
    assert data["cost_saved_usd"] > 0
    assert data["by_model"][0]["model"] == "mock"
    assert data["by_model"][0]["entries"] == 3
    human = cli("cache", "stats")
    assert "3 entries (0 expired)" in human.out
    assert "hits recorded: 3" in human.out
    assert "By model" in human.out
    assert cli("cache", "stats", "--program", "nothing", "--json").json()["entries"] == 0
    dry = cli("cache", "clear", "--dry-run", "--json").json()
    assert (dry["deleted"], dry["dry_run"]) == (3, True)
    assert cli("cache", "clear", "--older-than", "1d", "--json").json()["deleted"] == 0
    assert cli("cache", "clear", "--expired", "--json").json()["deleted"] == 0
    cleared = cli("cache", "clear", "--program", "triage")
    assert cleared.code == 0
    assert "deleted 3 response cache entries" in cleared.out
    assert cli("cache", "stats", "--json").json()["entries"] == 0


def test_batch_and_evaluate_take_cache(workdir: Path) -> None:
    register_ready()
    lines = [json.dumps({"ticket": f"t{i}", "priority": 1}) for i in range(3)]
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n")
    first = cli("batch", "triage", "in.jsonl", "--cache", "read_write", "--json")
    assert first.code == 0, first.err
    assert cli("cache", "stats", "--json").json()["entries"] == 9
    again = cli("batch", "triage", "in.jsonl", "--cache", "read_only", "--json")
    assert again.code == 0
    assert cli("cache", "stats", "--json").json()["hits"] == 9
    labelled = [json.dumps({"ticket": f"t{i}", "priority": 1, "team": "x"}) for i in range(3)]
    (workdir / "dev.jsonl").write_text("\n".join(labelled) + "\n")
    evaluated = cli("evaluate", "triage", "dev.jsonl", "--metric", "exact_match", "--json")
    assert evaluated.code == 0, evaluated.err
    assert cli("cache", "stats", "--json").json()["hits"] == 18  # evaluate reads it by default
    off = cli(
        "evaluate", "triage", "dev.jsonl", "--metric", "exact_match", "--cache", "off", "--json"
    )
    assert off.code == 0, off.err
    assert cli("cache", "stats", "--json").json()["hits"] == 18


def test_a_bad_cache_mode_or_age_is_a_usage_error(workdir: Path) -> None:
    register_ready()
    for args in (
        ("run", "triage", *TICKET, "--cache", "always"),
        ("batch", "triage", "missing.jsonl", "--cache", "always"),
        ("evaluate", "triage", "missing.jsonl", "--metric", "f1", "--cache", "always"),
        ("optimize", "triage", "missing.jsonl", "--metric", "f1", "--cache", "always"),
    ):
        outcome = cli(*args, "--json")
        assert outcome.code == 2, args
        assert outcome.json()["error"]["code"] == "bad_arguments"
        assert "cache" in outcome.json()["error"]["message"]
    aged = cli("cache", "clear", "--older-than", "soon", "--json")
    assert aged.code == 2
    assert "--older-than" in aged.json()["error"]["message"]


def test_config_show_lists_the_cache_settings_and_their_source(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text(
        '[backends.default]\nkind = "mock"\ncache = "read_only"\n\n[cache]\nttl = "2h"\n'
    )
    shown = cli("config", "show", "--json")
    assert shown.code == 0, shown.err
    settings = shown.json()["settings"]
    assert settings["cache.mode"] == {"value": "off", "source": "default", "origin": None}
    assert settings["cache.ttl"]["value"] == "2h"
    assert settings["cache.ttl"]["source"] == "file"
    assert settings["backends.default.cache"]["value"] == "read_only"
    bad = workdir / "bad.toml"
    bad.write_text('[cache]\nttl = "forever"\n')
    refused = cli("config", "show", "--config", str(bad), "--json")
    assert refused.code == 2
    assert "cache.ttl" in refused.json()["error"]["message"]

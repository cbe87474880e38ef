"""``dspex config show``: the effective settings and where each came from; the default flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_support import BROKEN_BACKEND_CONFIG, cli, register_ready


def test_config_show_json_gives_each_setting_its_value_and_source(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "dspex.toml").write_text("[defaults]\nbreakers = false\n")
    monkeypatch.setenv("DSPEX_TIMEOUT", "12.5")
    outcome = cli("config", "show", "--json", "--max-attempts", "5")
    assert outcome.code == 0
    data = outcome.json()
    settings = data["settings"]
    assert data["source"] == str(workdir / "dspex.toml")
    assert settings["defaults.breakers"] == {
        "value": False,
        "source": "file",
        "origin": str(workdir / "dspex.toml"),
    }
    assert settings["defaults.timeout"] == {
        "value": 12.5,
        "source": "environment",
        "origin": "DSPEX_TIMEOUT",
    }
    assert settings["defaults.retry.max_attempts"] == {
        "value": 5,
        "source": "flag",
        "origin": "--max-attempts",
    }
    assert settings["breaker.open_seconds"] == {"value": 30.0, "source": "default", "origin": None}


def test_config_show_prints_a_table_naming_the_sources(workdir: Path) -> None:
    outcome = cli("config", "show", "--attempt-timeout", "7")
    assert outcome.code == 0
    assert "defaults.timeout" in outcome.out
    assert "flag --attempt-timeout" in outcome.out
    assert "no file: defaults" in outcome.out


def test_config_show_reports_a_bad_configuration_without_a_traceback(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text("[defaults]\ntimeout = -1\n")
    outcome = cli("config", "show", "--json")
    assert outcome.code == 2
    error = outcome.json()["error"]
    assert error["code"] == "config_invalid"
    assert "defaults.timeout" in error["message"]
    assert "Traceback" not in outcome.out + outcome.err


def _attempts(data: dict[str, object]) -> list[int]:
    steps = data["steps"]
    assert isinstance(steps, list)
    return sorted(step["attempts"] for step in steps)


def test_run_retries_a_failing_backend_three_times_by_default_and_max_attempts_changes_it(
    workdir: Path,
) -> None:
    (workdir / "dspex.toml").write_text(
        BROKEN_BACKEND_CONFIG + "[defaults.retry]\ninitial_interval = 0.0\njitter = 0.0\n"
    )
    register_ready()
    base = ("run", "triage", "-i", "ticket=t", "-i", "priority=1", "--backend", "broken")
    by_default = cli(*base, "--json")
    assert by_default.code == 1
    assert 3 in _attempts(by_default.json())
    once = cli(*base, "--max-attempts", "1", "--json")
    assert once.code == 1
    assert set(_attempts(once.json())) <= {0, 1}


def test_batch_takes_the_default_flags_and_repeats_them_in_its_resume_command(
    workdir: Path,
) -> None:
    import json

    (workdir / "dspex.toml").write_text(BROKEN_BACKEND_CONFIG)
    register_ready()
    (workdir / "in.jsonl").write_text(json.dumps({"ticket": "t", "priority": 1}) + "\n")
    args = ("batch", "triage", "in.jsonl", "--backend", "broken", "--max-retries", "0")
    outcome = cli(*args, "--max-attempts", "1", "--attempt-timeout", "5", "--json")
    assert outcome.code == 1
    data = outcome.json()
    assert data["resume_command"].endswith("--attempt-timeout 5 --max-attempts 1")
    batch = cli("batches", "show", data["batch_id"], "--json").json()
    assert batch["config"]["calls_bound"] == {"summarize": 1, "route": 1, "flag": 1}

"""``dspex optimize`` and ``dspex optimizations``: the command-line contract."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import cli, register_ready

ROWS = [{"ticket": f"ticket {i}", "priority": i % 3, "team": "ops"} for i in range(6)]


def _trainset(workdir: Path) -> str:
    path = workdir / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


def test_optimize_json_reports_the_new_version_and_its_lineage(workdir: Path) -> None:
    register_ready()
    outcome = cli("optimize", "triage", _trainset(workdir), "--metric", "f1", "--json")
    assert outcome.code == 0, outcome.err
    data = outcome.json()  # DSPy's own progress output went to stderr
    assert {"program", "version", "parent_version", "optimizer", "score", "baseline_score"} <= set(
        data
    )
    assert (data["program"], data["parent_version"], data["version"]) == ("triage", 1, 2)
    assert (data["optimizer"], data["status"]) == ("bootstrap_few_shot", "completed")
    assert data["stats"]["lm_calls"] == data["stats"]["program_calls"] * 3  # three LM modules

    shown = cli("optimizations", "show", data["optimization_id"], "--json")
    assert shown.code == 0
    assert shown.json()["trials"][0]["detail"] == {"kind": "baseline", "version": 1}
    listed = cli("optimizations", "list", "--program", "triage", "--json")
    assert [run["optimization_id"] for run in listed.json()] == [data["optimization_id"]]
    spec = cli("program", "show", "triage", "--version", "2", "--json").json()
    assert spec["program"]["status"] == "draft"
    assert spec["spec"]["metadata"]["dspex.lineage"]["optimization_id"] == data["optimization_id"]


def test_optimize_prints_scores_and_the_draft_for_people(workdir: Path) -> None:
    register_ready()
    outcome = cli("optimize", "triage", _trainset(workdir), "--metric", "f1", "--max-demos", "2")
    assert outcome.code == 0, outcome.err
    assert "triage v1 → v2 with bootstrap_few_shot" in outcome.out
    assert "v2 is a draft" in outcome.out
    listed = cli("optimizations", "list")
    assert "bootstrap_few_shot" in listed.out or "bootst" in listed.out
    run_id = cli("optimizations", "list", "--json").json()[0]["optimization_id"]
    shown = cli("optimizations", "show", run_id)
    assert "Trials" in shown.out
    assert "baseline" in shown.out


def test_mistakes_exit_2_with_a_stable_code_and_nothing_recorded(workdir: Path) -> None:
    register_ready()
    train = _trainset(workdir)
    unknown = cli("optimize", "triage", train, "--metric", "f1", "--optimizer", "simba", "--json")
    assert unknown.code == 2
    assert unknown.json()["error"]["errors"][0]["code"] == "unknown_optimizer"
    metric = cli("optimize", "triage", train, "--metric", "nope", "--json")
    assert (metric.code, metric.json()["error"]["code"]) == (2, "metric_invalid")
    missing = cli("optimize", "triage", str(workdir / "missing.jsonl"), "--metric", "f1")
    assert missing.code == 2
    assert "Traceback" not in missing.err
    gepa = cli("optimize", "triage", train, "--metric", "f1", "--optimizer", "gepa", "--json")
    assert (gepa.code, gepa.json()["error"]["code"]) == (2, "config_invalid")
    assert cli("optimizations", "list", "--json").json() == []
    assert "no optimization runs" in cli("optimizations", "list").out
    assert cli("optimizations", "show", "nope", "--json").code == 2


def test_optimize_without_a_trainset_or_a_run_to_resume_exits_2(workdir: Path) -> None:
    register_ready()
    missing = cli("optimize", "triage", "--json")
    assert missing.code == 2
    assert missing.json()["error"]["code"] == "usage"
    assert "--resume" in missing.json()["error"]["message"]


def test_resuming_a_completed_run_is_refused_with_its_version(workdir: Path) -> None:
    register_ready()
    done = cli("optimize", "triage", _trainset(workdir), "--metric", "f1", "--json").json()
    again = cli("optimize", "--resume", done["optimization_id"], "--json")
    assert again.code != 0
    error = again.json()["error"]
    assert error["code"] == "optimization_failed"
    assert f"already completed (version {done['version']})" in error["message"]
    given = cli("optimize", "--resume", done["optimization_id"], "--seed", "2", "--json")
    assert given.code == 2
    assert given.json()["error"]["errors"][0]["field"] == "seed"

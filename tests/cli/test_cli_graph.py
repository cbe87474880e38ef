"""``dspex graph PROGRAM [--html FILE]`` through Typer's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import cli, register_ready, run_ok


def test_graph_prints_levels_critical_path_width_and_slack(workdir: Path) -> None:
    register_ready()
    outcome = cli("graph", "triage")
    assert outcome.code == 0
    assert "Levels" in outcome.out
    assert "critical path: route → flag" in outcome.out
    assert "width: 2" in outcome.out
    assert "slack" in outcome.out
    assert "last run: none recorded" in outcome.out
    assert "(spec)" in outcome.out or "(default)" in outcome.out
    assert "recorded = median of recorded runs" in outcome.out


def test_graph_labels_each_estimate_with_its_source(workdir: Path) -> None:
    register_ready()
    before = cli("graph", "triage", "--json").json()["plan"]["duration_sources"]
    assert set(before.values()) <= {"spec", "default"}
    run_ok()
    after = cli("graph", "triage", "--json").json()["plan"]["duration_sources"]
    assert set(after.values()) == {"recorded"}


def test_graph_json_prints_the_graph_info_keys(workdir: Path) -> None:
    register_ready()
    data = cli("graph", "triage", "--json").json()
    assert set(data) == {"program", "version", "plan", "modules", "last_run", "batch"}
    assert data["batch"] is None  # no --batch
    assert data["plan"]["levels"] == [["summarize", "route"], ["flag"]]
    assert data["plan"]["width"] == 2
    assert {m["name"]: m["depends_on"] for m in data["modules"]}["flag"] == ["summarize", "route"]


def test_graph_mentions_the_last_run(workdir: Path) -> None:
    register_ready()
    execution_id = run_ok()["execution_id"]
    outcome = cli("graph", "triage")
    assert f"last run: {execution_id} completed" in outcome.out
    assert cli("graph", "triage", "--json").json()["last_run"]["execution_id"] == execution_id


def test_html_report_is_a_self_contained_page_with_the_last_run(workdir: Path) -> None:
    register_ready()
    execution_id = run_ok()["execution_id"]
    outcome = cli("graph", "triage", "--html", "graph.html")
    page = (workdir / "graph.html").read_text(encoding="utf-8")
    assert outcome.code == 0
    assert "wrote graph.html" in outcome.out
    assert page.startswith("<!DOCTYPE html>")
    assert execution_id in page
    assert "<svg" in page
    assert "<script" not in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_html_report_highlights_the_critical_path(workdir: Path) -> None:
    register_ready()
    run_ok()
    cli("graph", "triage", "--html", "graph.html", "--json")
    page = (workdir / "graph.html").read_text(encoding="utf-8")
    assert "critical" in page
    assert "→ flag" in page


def test_html_report_without_any_run_says_so(workdir: Path) -> None:
    register_ready()
    cli("graph", "triage", "--html", "graph.html")
    assert "no recorded run" in (workdir / "graph.html").read_text(encoding="utf-8")


def test_an_unwritable_html_path_exits_two(workdir: Path) -> None:
    register_ready()
    outcome = cli("graph", "triage", "--html", "missing-dir/graph.html")
    assert outcome.code == 2
    assert "cannot write" in outcome.err


def test_graph_of_an_unknown_program_exits_two(workdir: Path) -> None:
    outcome = cli("graph", "nope", "--json")
    assert outcome.code == 2
    assert outcome.json()["error"]["code"] == "not_found"


def _batch_of(workdir: Path, n: int) -> str:
    lines = [json.dumps({"ticket": f"ticket {i}", "priority": i % 3}) for i in range(n)]
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    outcome = cli("batch", "triage", "in.jsonl", "--json")
    assert outcome.code == 0, outcome.err
    return str(outcome.json()["batch_id"])


def test_graph_of_a_batch_shows_module_durations_over_its_items_and_the_slowest(
    workdir: Path,
) -> None:
    register_ready()
    batch_id = _batch_of(workdir, 7)
    data = cli("graph", "triage", "--batch", batch_id[:13], "--json").json()
    profile = data["batch"]
    assert (profile["batch_id"], profile["items"], profile["sampled"]) == (batch_id, 7, 7)
    assert {m["module"]: m["runs"] for m in profile["modules"]} == {
        "summarize": 7,
        "route": 7,
        "flag": 7,
    }
    for m in profile["modules"]:
        assert m["p50_ms"] <= m["p95_ms"] <= m["max_ms"]
    slowest = [item["duration_ms"] for item in profile["slowest"]]
    assert len(slowest) == 5
    assert slowest == sorted(slowest, reverse=True)
    outcome = cli("graph", "triage", "--batch", batch_id, "--html", "report.html")
    assert outcome.code == 0, outcome.err
    assert "slowest items: #" in outcome.out
    page = (workdir / "report.html").read_text(encoding="utf-8")
    assert f'<section data-batch="{batch_id}">' in page
    assert page.count("data-batch-module=") == 3
    assert page.count("data-slow-item=") == 5


def test_graph_of_a_batch_of_another_program_or_an_unknown_batch_exits_two(
    workdir: Path,
) -> None:
    register_ready()
    outcome = cli("graph", "triage", "--batch", "ffffffff")
    assert outcome.code == 2
    assert "Traceback" not in outcome.err

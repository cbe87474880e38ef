"""``dspex health`` and ``dspex cleanup`` through Typer's CliRunner (in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dspex.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("DSPEX_CONFIG", "DSPEX_DATABASE_URL", "DSPEX_DEFAULT_BACKEND", "DSPEX_WORKER_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_health_of_the_embedded_database_exits_0_with_json() -> None:
    result = runner.invoke(app, ["health", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "healthy"
    assert data["level"] == "standard"
    assert {c["name"] for c in data["checks"]} >= {"database", "migrations", "tables"}


def test_health_prints_a_table_and_the_overall_status() -> None:
    result = runner.invoke(app, ["health", "--level", "comprehensive"])
    assert result.exit_code == 0, result.output
    assert "overall: healthy" in result.stdout
    assert "performance" in result.stdout


def test_health_of_an_unreachable_database_exits_2_without_a_traceback() -> None:
    url = "postgresql://postgres@127.0.0.1:1/nothing"
    result = runner.invoke(app, ["health", "--json", "--database-url", url])
    assert result.exit_code == 2
    assert json.loads(result.stdout)["status"] == "unhealthy"
    assert "Traceback" not in result.output


def test_health_rejects_an_unknown_level_with_exit_2() -> None:
    result = runner.invoke(app, ["health", "--level", "thorough"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown level")


def test_cleanup_dry_run_reports_every_category_as_json() -> None:
    result = runner.invoke(app, ["cleanup", "--dry-run", "--older-than", "30d", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["dry_run"] is True
    for key in ("requeued", "lease_expired", "batches_finalized", "programs_errored"):
        assert data[key] == {"count": 0, "ids": []}
    assert data["retention_cutoff"] is not None


def test_cleanup_prints_a_table() -> None:
    result = runner.invoke(app, ["cleanup"])
    assert result.exit_code == 0, result.output
    assert "changed: 0" in result.stdout


def test_a_bad_retention_age_is_one_line_and_exit_2() -> None:
    result = runner.invoke(app, ["cleanup", "--older-than", "soon"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: --older-than: not an age")


def _record_runs(workdir: Path, count: int) -> None:
    import asyncio

    from tests.runtime._support import QA

    import dspex

    async def go() -> None:
        async with dspex.Runtime.open(f"sqlite:///{workdir / 'runs.db'}") as rt:
            info = await rt.register(QA)
            await rt.initialize(info.name, info.version)
            for i in range(count):
                await rt.execute("qa", {"question": f"q{i}?"})

    asyncio.run(go())


def test_comprehensive_prints_per_program_statistics_and_deep_adds_trends(
    workdir: Path,
) -> None:
    _record_runs(workdir, 3)
    url = f"sqlite:///{workdir / 'runs.db'}"
    args = ["health", "--database-url", url, "--level"]
    comprehensive = runner.invoke(app, [*args, "comprehensive"])
    # a loaded machine may read a slow database as degraded (exit 1); the tables are the point
    assert comprehensive.exit_code in (0, 1), comprehensive.output
    assert "programs (last 24 h)" in comprehensive.stdout
    assert "trends" not in comprehensive.stdout
    deep = runner.invoke(app, [*args, "deep"])
    assert deep.exit_code in (0, 1), deep.output
    assert "programs (last 168 h)" in deep.stdout
    assert "trends: last 24 h against the days before" in deep.stdout
    assert "100.0% / -" in deep.stdout  # three recent runs, none earlier

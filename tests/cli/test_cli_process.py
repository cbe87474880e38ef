"""The command line in a fresh process: start-up cost, ``python -m dspex``, register then run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_support import PROGRAM, cli
from cli_support import dspex_process as fresh

VENV_DSPEX = Path(sys.executable).with_name("dspex")


def test_the_installed_script_prints_help_listing_every_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(VENV_DSPEX), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0
    for command in ("program", "run", "executions", "graph", "db", "signature"):
        assert command in done.stdout


def test_loading_the_cli_imports_neither_dspy_nor_the_database_stack(tmp_path: Path) -> None:
    code = (
        "import sys, dspex.cli;"
        "print(sorted(m for m in ('dspy', 'sqlalchemy', 'litellm', 'dspex.runtime') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_register_and_run_work_in_a_fresh_process(tmp_path: Path) -> None:
    (tmp_path / "program.json").write_text(json.dumps(PROGRAM))
    registered = fresh("program", "register", "program.json", "--init", "--json", cwd=tmp_path)
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["status"] == "ready"
    ran = fresh("run", "triage", "-i", "ticket=hello", "-i", "priority=2", "--json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["status"] == "completed"


def test_a_user_mistake_in_a_fresh_process_is_one_line_without_a_traceback(
    tmp_path: Path,
) -> None:
    done = fresh("run", "nope", "-i", "x=1", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error:")


def test_db_upgrade_creates_the_embedded_database(workdir: Path) -> None:
    outcome = cli("db", "upgrade", "--json")
    assert outcome.code == 0
    data = outcome.json()
    assert data["database_url"] == f"sqlite:///{workdir / '.dspex' / 'dspex.db'}"
    assert data["upgraded"] is True
    assert data["previous_revision"] is None
    assert data["revision"]
    assert (workdir / ".dspex" / "dspex.db").is_file()


def test_db_upgrade_migrates_the_named_database(workdir: Path) -> None:
    url = f"sqlite:///{workdir / 'x.db'}"
    first = cli("db", "upgrade", "--database-url", url)
    assert first.code == 0
    assert "migrated" in first.out
    again = cli("db", "upgrade", "--database-url", url)
    assert again.code == 0
    assert "up to date" in again.out
    assert (workdir / "x.db").is_file()


def test_db_upgrade_of_an_unusable_database_exits_one_with_a_storage_error(workdir: Path) -> None:
    (workdir / "adir").mkdir()
    outcome = cli("db", "upgrade", "--database-url", f"sqlite:///{workdir / 'adir'}", "--json")
    assert outcome.code == 1
    assert outcome.json()["error"]["code"] == "storage_error"


def test_db_upgrade_with_a_broken_config_is_a_user_mistake(workdir: Path) -> None:
    (workdir / "dspex.toml").write_text("database_url = [")
    outcome = cli("db", "upgrade")
    assert outcome.code == 2
    assert "dspex.toml" in outcome.err

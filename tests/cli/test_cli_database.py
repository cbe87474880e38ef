"""The database a command opens: read-only SQLite URIs and a database with no schema yet."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cli_support import cli, register_ready, run_ok


def read_only(path: Path) -> str:
    """SQLAlchemy's form of a read-only SQLite URI (relative to the working directory)."""
    return f"sqlite:///file:{path}?mode=ro&uri=true"


def test_a_read_only_uri_reads_the_existing_database(workdir: Path) -> None:
    register_ready()
    execution_id = run_ok()["execution_id"]
    outcome = cli("executions", "list", "--database-url", read_only(Path(".dspex/dspex.db")))
    assert outcome.code == 0, outcome.err
    assert execution_id in outcome.out


def test_a_read_only_uri_leaves_no_file_directory_behind(workdir: Path) -> None:
    register_ready()
    cli("program", "list", "--database-url", read_only(Path(".dspex/dspex.db")))
    assert sorted(p.name for p in workdir.iterdir()) == [".dspex", "program.yaml"]


def test_a_read_only_uri_refuses_to_write(workdir: Path) -> None:
    register_ready()
    url = read_only(Path(".dspex/dspex.db"))
    (workdir / "other.yaml").write_text(
        (workdir / "program.yaml").read_text().replace("name: triage", "name: other")
    )
    outcome = cli("program", "register", "other.yaml", "--database-url", url)
    assert outcome.code == 1
    assert "readonly" in outcome.err
    names = [p["name"] for p in cli("program", "list", "--json").json()]
    assert names == ["triage"]


def test_a_read_only_uri_of_a_missing_file_creates_nothing(workdir: Path) -> None:
    outcome = cli("program", "list", "--database-url", read_only(Path("missing/dspex.db")))
    assert outcome.code == 1
    assert outcome.err.startswith("error:")
    assert sorted(p.name for p in workdir.iterdir()) == ["program.yaml"]


def test_a_database_without_a_schema_says_so_and_how_to_create_it(workdir: Path) -> None:
    sqlite3.connect(workdir / "empty.db").close()  # an empty file, opened read-only below
    outcome = cli("program", "list", "--database-url", read_only(Path("empty.db")))
    assert outcome.code == 1
    assert "None" not in outcome.err
    assert "the database has no schema yet: run `dspex db upgrade`" in outcome.err


def test_the_absolute_file_uri_form_works_as_well(workdir: Path) -> None:
    register_ready()
    url = f"sqlite:///file:{workdir / '.dspex' / 'dspex.db'}?mode=ro&uri=true"
    listed = cli("program", "list", "--database-url", url, "--json")
    assert [p["name"] for p in listed.json()] == ["triage"]

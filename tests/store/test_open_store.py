"""Choosing a store from a URL, and keeping SQLAlchemy inside the store package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import dspex
from dspex.errors import ConfigError, StorageError
from dspex.store import MemoryStore, SqlStore, open_store
from dspex.store._engine import normalize_url

SRC = Path(dspex.__file__).parent


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:///data/dspex.db", "sqlite+aiosqlite:///data/dspex.db"),
        ("sqlite+aiosqlite:////abs/dspex.db", "sqlite+aiosqlite:////abs/dspex.db"),
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
    ],
)
def test_urls_are_normalised_to_async_drivers(given: str, expected: str) -> None:
    assert normalize_url(given).render_as_string() == expected


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "::nope::"])
def test_unusable_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        normalize_url(url)


def test_memory_url_opens_the_in_memory_twin() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


async def test_no_url_opens_the_embedded_sqlite_database_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store(None) as store:
        assert isinstance(store, SqlStore)
        assert await store.is_current()
    assert (tmp_path / ".dspex" / "dspex.db").exists()


def test_printed_url_hides_the_password() -> None:
    store = open_store("postgresql://user:secret@localhost/db")
    assert "secret" not in store.url
    assert store.url.startswith("postgresql+asyncpg://user:")


async def test_a_closed_memory_store_refuses_work() -> None:
    store = MemoryStore()
    await store.close()
    with pytest.raises(StorageError):
        await store.ping()


def test_only_the_store_package_imports_sqlalchemy() -> None:
    pattern = re.compile(r"^\s*(import sqlalchemy|from sqlalchemy)", re.MULTILINE)
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "store" not in path.relative_to(SRC).parts[:1] and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_importing_the_store_package_does_not_load_sqlalchemy() -> None:
    code = "import sys, dspex.store, dspex.records; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_an_unopenable_sqlite_path_fails_cleanly_without_a_stray_driver_thread(
    tmp_path: Path,
) -> None:
    import threading

    from dspex.errors import StorageError
    from dspex.store.sql import SqlStore

    (tmp_path / "adir").mkdir()
    before = set(threading.enumerate())
    store = SqlStore(f"sqlite:///{tmp_path / 'adir'}", auto_upgrade=False)
    with pytest.raises(StorageError, match="unable to open"):
        await store.schema_revision()
    await store.close()
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]

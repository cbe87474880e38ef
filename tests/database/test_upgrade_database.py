"""`dspex.upgrade_database` and `dspex db upgrade` against SQLite and a real PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

import dspex
from dspex.errors import ConfigError


async def test_upgrading_a_new_sqlite_file_creates_the_schema_then_is_a_no_op(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = await dspex.upgrade_database(url)
    assert first.upgraded is True
    assert first.previous_revision is None
    assert first.revision
    second = await dspex.upgrade_database(url)
    assert second.upgraded is False
    assert second.revision == first.revision


async def test_the_in_memory_store_has_nothing_to_migrate() -> None:
    with pytest.raises(ConfigError, match="in-memory"):
        await dspex.upgrade_database("memory://")


@pytest.fixture
async def fresh_pg_database(postgres_url: str) -> AsyncIterator[str]:
    """A throwaway PostgreSQL database, so the schema lands in its default search path."""
    name = f"dspex_upgrade_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.postgres
async def test_postgres_is_migrated_by_upgrade_and_then_usable(fresh_pg_database: str) -> None:
    url = fresh_pg_database
    status = await dspex.upgrade_database(url)
    assert status.upgraded is True
    async with dspex.Runtime.open(url) as rt:
        info = await rt.register(
            {
                "name": "one",
                "signature": "q: str -> a: str",
                "modules": {"m": {"kind": "predict", "signature": "q: str -> a: str"}},
            }
        )
        assert info.version == 1
    assert (await dspex.upgrade_database(url)).upgraded is False


@pytest.mark.postgres
async def test_a_runtime_refuses_an_unmigrated_postgres_and_says_how_to_fix_it(
    fresh_pg_database: str,
) -> None:
    with pytest.raises(dspex.StorageError, match="dspex db upgrade"):
        async with dspex.Runtime.open(fresh_pg_database):
            pass

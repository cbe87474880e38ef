"""The schema comes from Alembic migrations, matches tables.py, and upgrades idempotently."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from tests.store.conftest import POSTGRES, PgSchema

from dspex.errors import StorageError
from dspex.store import SqlStore
from dspex.store.migrations import VERSION_TABLE, head_revision
from dspex.store.tables import metadata

EXPECTED_TABLES = {
    "attempts",
    "batches",
    "breakers",
    "evaluation_items",
    "evaluations",
    "executions",
    "optimization_trials",
    "optimizations",
    "programs",
    "promotions",
    "response_cache",
    "signatures",
    "steps",
    VERSION_TABLE,
}


@pytest.fixture(params=["sqlite", POSTGRES])
async def empty(request: pytest.FixtureRequest) -> AsyncIterator[SqlStore]:
    """A SQL store on an empty database (nothing initialized, nothing migrated)."""
    if request.param == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        # SQLite would upgrade itself on first use; PostgreSQL (below) never does by default.
        store = SqlStore(f"sqlite:///{tmp_path}/empty.db", auto_upgrade=False)
        yield store
        await store.close()
        return
    schema = PgSchema(request.getfixturevalue("postgres_url"))
    await schema.create()
    store = SqlStore(schema.url, schema=schema.name)
    try:
        yield store
    finally:
        await store.close()
        await schema.drop()


async def _tables(store: SqlStore) -> set[str]:
    async with store._engine.connect() as conn:
        return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))


async def test_upgrade_on_an_empty_database_creates_exactly_the_schema(empty: SqlStore) -> None:
    assert await empty.schema_revision() is None
    await empty.upgrade()
    assert await _tables(empty) == EXPECTED_TABLES
    assert await empty.schema_revision() == head_revision()


async def test_upgrade_is_idempotent(empty: SqlStore) -> None:
    await empty.upgrade()
    await empty.upgrade()
    assert await _tables(empty) == EXPECTED_TABLES
    assert await empty.is_current()


async def test_migrated_schema_matches_the_table_definitions(empty: SqlStore) -> None:
    await empty.upgrade()

    def diff(conn: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return [d for d in compare_metadata(context, metadata) if d[0] != "remove_table"]

    async with empty._engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_sqlite_upgrades_itself_on_first_use(tmp_path: Any) -> None:
    path = tmp_path / "nested" / "dir" / "dspex.db"
    async with SqlStore(f"sqlite:///{path}") as store:
        assert await store.is_current()
    assert path.exists()


async def test_a_store_not_allowed_to_upgrade_refuses_an_unmigrated_database(
    empty: SqlStore,
) -> None:
    with pytest.raises(StorageError, match="dspex db upgrade"):
        await empty.initialize()
    await empty.upgrade()
    await empty.initialize()


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Any) -> None:
    store = SqlStore(f"sqlite:///{tmp_path}/db.sqlite", busy_timeout_ms=1234)
    async with store, store._engine.connect() as conn:
        pragmas = {
            name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert pragmas == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 1234,
        "synchronous": 1,
    }


async def test_a_closed_or_unreachable_database_raises_storage_error() -> None:
    store = SqlStore("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError):
        await store.ping()
    await store.close()

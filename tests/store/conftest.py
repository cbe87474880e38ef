"""Fixtures for the store suite: a controllable clock and every Store implementation.

``postgres_url`` (from the root conftest) skips when the server is unreachable, unless
``DSPEX_REQUIRE_POSTGRES=1``. Each PostgreSQL store works in a fresh schema, dropped after the
test, so concurrent runs never collide.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from tests.store._clock import FakeClock

from dspex.records import ProgramRecord
from dspex.store import MemoryStore, SqlStore, Store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class PgSchema:
    """A fresh, empty PostgreSQL schema for one test, dropped by :meth:`drop`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = f"dspex_test_{uuid.uuid4().hex[:12]}"

    async def _run(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self) -> str:
        await self._run(f'CREATE SCHEMA "{self.name}"')
        return self.name

    async def drop(self) -> None:
        await self._run(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


@asynccontextmanager
async def open_kind(
    kind: str, request: pytest.FixtureRequest, clock: FakeClock, **options: Any
) -> AsyncIterator[Store]:
    """An initialized store of one kind, cleaned up afterwards."""
    if kind == "memory":
        async with MemoryStore(clock=clock) as memory:
            yield memory
        return
    if kind == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        async with SqlStore(f"sqlite:///{tmp_path}/dspex.db", clock=clock, **options) as lite:
            yield lite
        return
    schema = PgSchema(request.getfixturevalue("postgres_url"))
    await schema.create()
    try:
        options.setdefault("auto_upgrade", True)
        async with SqlStore(schema.url, clock=clock, schema=schema.name, **options) as pg:
            yield pg
    finally:
        await schema.drop()


POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Store]:
    """Every Store implementation, initialized and empty."""
    async with open_kind(request.param, request, clock) as opened:
        yield opened


@pytest.fixture(params=["sqlite", POSTGRES])
async def sql_store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[SqlStore]:
    """The SQL implementations only, initialized and empty."""
    async with open_kind(request.param, request, clock) as opened:
        assert isinstance(opened, SqlStore)
        yield opened


@pytest.fixture
async def program(store: Store) -> ProgramRecord:
    """A registered program ``qa`` v1."""
    return await store.put_program("qa", {"modules": ["answer"]}, "hash-1")

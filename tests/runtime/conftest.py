"""Fixtures for the runtime suite: a runtime over every store, and the programs it runs.

Stores come from the store suite's helper, so PostgreSQL runs in a fresh schema per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.runtime._support import make_runtime
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex.runtime import Runtime


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def runtime(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A started runtime with a mock ``default`` backend, on every store."""
    async with open_kind(request.param, request, clock) as store, make_runtime(store) as rt:
        yield rt


@pytest.fixture(params=["sqlite", POSTGRES])
async def sql_runtime(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Runtime]:
    """A started runtime on the SQL stores only."""
    async with open_kind(request.param, request, clock) as store, make_runtime(store) as rt:
        yield rt

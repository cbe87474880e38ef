"""Every store for the cleanup suite (PostgreSQL in a fresh schema), and a ``qa`` program."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex.store import Store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def store(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Store]:
    async with open_kind(request.param, request, clock) as opened:
        await opened.put_program("qa", {"modules": ["answer"]}, "hash-1")
        yield opened

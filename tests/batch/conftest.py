"""Fixtures for the batch suite: a runtime over every store with an instrumented mock backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.batch._support import Scripted
from tests.runtime._support import make_runtime, ready
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

from dspex.backends.mock import MockBackend
from dspex.config import DefaultsSettings
from dspex.resilience import RetryPolicy
from dspex.runtime import Runtime


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def handler() -> Scripted:
    return Scripted()


async def _open(
    kind: Any, request: pytest.FixtureRequest, clock: FakeClock, handler: Scripted
) -> AsyncIterator[Runtime]:
    # modules make a single attempt of their own: this suite is about the batch's item retries
    defaults = DefaultsSettings(retry=RetryPolicy(max_attempts=1))
    backends = {"default": MockBackend("default", handler=handler)}
    async with (
        open_kind(kind, request, clock) as store,
        make_runtime(store, backends, defaults=defaults) as rt,
    ):
        await ready(rt)
        yield rt


@pytest.fixture
async def rt(
    request: pytest.FixtureRequest, clock: FakeClock, handler: Scripted
) -> AsyncIterator[Runtime]:
    """A runtime on the memory store with the ``qa`` program ready."""
    async for opened in _open("memory", request, clock, handler):
        yield opened


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def any_rt(
    request: pytest.FixtureRequest, clock: FakeClock, handler: Scripted
) -> AsyncIterator[Runtime]:
    """The same on every store."""
    async for opened in _open(request.param, request, clock, handler):
        yield opened

"""``own_task``: a DSPy call run as a task of its own behaves as the call awaited in place."""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

import pytest

from dspex.backends._loop import own_task

SEEN: ContextVar[list[str] | None] = ContextVar("seen", default=None)
INNER: ContextVar[str] = ContextVar("inner", default="unset")


async def test_the_result_and_the_error_of_the_call_reach_its_awaiter() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    assert await own_task(answer()) == 42
    with pytest.raises(KeyError, match="boom"):
        await own_task(fail())


async def test_the_call_sees_the_context_of_its_awaiter_and_keeps_what_it_sets() -> None:
    notes: list[str] = []

    async def call() -> str:
        found = SEEN.get()
        assert found is notes
        found.append("inside")
        INNER.set("set inside")
        await asyncio.sleep(0)
        return INNER.get()

    token = SEEN.set(notes)
    try:
        assert await own_task(call()) == "set inside"
    finally:
        SEEN.reset(token)
    assert notes == ["inside"]  # a mutable value it was given is shared
    assert INNER.get() == "unset"  # what it set is its own


async def test_cancelling_the_awaiter_cancels_the_call() -> None:
    started = asyncio.Event()
    ended: list[str] = []

    async def hang() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    async def awaiter() -> None:
        await own_task(hang())

    outer = asyncio.ensure_future(awaiter())
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert ended == ["cancelled"]


async def test_a_timeout_around_the_awaiter_ends_the_call() -> None:
    ended: list[str] = []

    async def hang(scope: asyncio.Timeout) -> None:
        scope.reschedule(asyncio.get_running_loop().time())  # running: now it expires
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("ended")

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as scope:
            await own_task(hang(scope))
    assert ended == ["ended"]

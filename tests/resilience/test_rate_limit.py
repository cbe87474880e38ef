"""The rate limiter (rpm, tpm) on a fake clock, and the backend wrapper around a mock backend."""

from __future__ import annotations

import asyncio

import pytest

from dspex.backends.base import PredictRequest, PredictResult
from dspex.backends.mock import MockBackend
from dspex.resilience.ratelimit import (
    RateLimitedBackend,
    RateLimiter,
    measure_waits,
    rate_limited,
    split_limits,
)
from dspex.signatures import Signature


class FakeTime:
    """A clock that only moves when someone sleeps (sleeps are recorded)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class StillTime(FakeTime):
    """A clock that never moves: every caller reserves its turn at the same instant."""

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)


async def test_calls_in_a_row_start_one_rpm_interval_apart() -> None:
    t = FakeTime()
    limiter = RateLimiter(rpm=60, clock=t.clock, sleep=t.sleep)
    starts = []
    for _ in range(5):
        await limiter.acquire()
        starts.append(t.now)
    assert starts == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])
    assert limiter.waited_s == pytest.approx(4.0)


async def test_concurrent_callers_get_turns_in_arrival_order() -> None:
    t = StillTime()
    limiter = RateLimiter(rpm=120, clock=t.clock, sleep=t.sleep)  # 2 a second, burst 2
    waits = await asyncio.gather(*(limiter.acquire() for _ in range(6)))
    assert waits == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


async def test_an_idle_limiter_refills_to_one_second_of_requests_and_no_more() -> None:
    t = FakeTime()
    limiter = RateLimiter(rpm=120, clock=t.clock, sleep=t.sleep)
    t.now = 3600.0  # an hour idle: still only one second's worth (2) at once
    waits = [await limiter.acquire() for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.0, 0.5])


async def test_tokens_used_make_the_next_caller_wait_until_the_bucket_refilled() -> None:
    t = FakeTime()
    limiter = RateLimiter(tpm=600, clock=t.clock, sleep=t.sleep)  # 10 tokens a second
    assert await limiter.acquire() == 0.0
    limiter.spend(60)  # level 10 - 60 = -50: five seconds to get above zero
    assert await limiter.acquire() == pytest.approx(5.0, abs=1e-6)


async def test_a_caller_cancelled_while_waiting_gives_its_turn_back() -> None:
    t = StillTime()
    gate = asyncio.Event()

    async def blocking_sleep(seconds: float) -> None:
        t.sleeps.append(seconds)
        await gate.wait()

    limiter = RateLimiter(rpm=60, clock=t.clock, sleep=blocking_sleep)
    await limiter.acquire()  # takes the one free turn
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # the cancelled caller's turn is free again: the next one waits 1 s, not 2
    assert limiter._reserve() == pytest.approx(1.0)


async def test_waits_are_counted_in_the_scope_that_measures_them() -> None:
    t = FakeTime()
    limiter = RateLimiter(rpm=60, clock=t.clock, sleep=t.sleep)
    await limiter.acquire()
    with measure_waits() as waits:
        await limiter.acquire()
        await limiter.acquire()
    await limiter.acquire()  # outside the scope
    assert waits.seconds == pytest.approx(2.0)
    assert limiter.waited_s == pytest.approx(3.0)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rpm"):
        RateLimiter(rpm=0)
    with pytest.raises(ValueError, match="tpm"):
        RateLimiter(tpm=-1)


async def test_the_wrapper_counts_each_answers_tokens_and_delegates_the_rest() -> None:
    t = FakeTime()
    inner = MockBackend("m")
    backend = RateLimitedBackend(inner, RateLimiter(tpm=60, clock=t.clock, sleep=t.sleep))
    request = PredictRequest(Signature.parse("question: str -> answer: str"), {"question": "q"})
    result = await backend.complete(request)
    assert isinstance(result, PredictResult)
    used = sum(u.total_tokens for u in result.usage.values())
    assert used > 1
    await backend.complete(request)  # waits for the first answer's tokens (1 token a second)
    assert t.sleeps == pytest.approx([used - 1.0], abs=1e-6)
    assert backend.name == "m"
    assert (await backend.health()).status == "healthy"
    await backend.aclose()


def test_a_backend_without_limits_is_not_wrapped() -> None:
    inner = MockBackend("m")
    assert rate_limited(inner, None, None) is inner
    wrapped = rate_limited(inner, 60, None)
    assert isinstance(wrapped, RateLimitedBackend)
    assert wrapped.inner is inner
    assert not hasattr(wrapped, "lm")


def test_worker_processes_split_each_limit_evenly() -> None:
    backends = {"a": {"kind": "openai", "rpm": 600.0, "tpm": 90000.0}, "b": {"kind": "mock"}}
    split = split_limits(backends, 3)
    assert split["a"]["rpm"] == pytest.approx(200.0)
    assert split["a"]["tpm"] == pytest.approx(30000.0)
    assert split["b"] == {"kind": "mock"}
    assert backends["a"]["rpm"] == 600.0  # the settings given are left alone
    assert split_limits(backends, 1) == backends


def test_a_dspy_backend_keeps_its_lm_behind_the_limiter() -> None:
    from dspex.backends.dspy_backend import DspyBackend

    inner = DspyBackend("d", model="openai/loopback-model")
    wrapped = rate_limited(inner, 60, 1000)
    assert isinstance(wrapped, RateLimitedBackend)
    assert wrapped.lm is inner.lm  # type: ignore[attr-defined]
    assert "rpm=60" in repr(wrapped)

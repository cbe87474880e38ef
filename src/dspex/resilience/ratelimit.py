"""Requests and tokens per minute (``rpm``, ``tpm``): a backend wrapper that makes callers wait.

``[backends.NAME] rpm = 500, tpm = 200000`` wraps that backend in a :class:`RateLimitedBackend`
when the runtime builds it. Every call through the backend (every execution of the process, each
retry, each attempt a coordinator group makes on it) first takes its turn from a
:class:`RateLimiter`; a caller over the limit waits, it never fails. The limiter sits right on
the transport, below the retry loop and the coordinator, because providers count the requests
that reach them, retries included. A ``kind: dspy`` module's LM calls are limited when its
backend is a coordinator group (each routed call takes its member's turn); on a plain backend the
module calls the ``dspy.LM`` itself and is not limited.

How the limits are kept:

- ``rpm``: a token bucket (GCRA) holding at most one second's worth of requests and refilled at
  ``rpm / 60`` a second; each call takes one. Turns are handed out in arrival order at the moment
  a call asks (no await between looking and taking), so waiting callers are served first come,
  first served, and in any window of ``T`` seconds at most ``rpm / 60 × (T + 1)`` calls start.
- ``tpm``: a bucket of one second's worth of tokens, refilled at ``tpm / 60`` a second. A call's
  tokens are known only from its answer, so they are taken when it returns (the level may go
  below zero); a call starts only while the level is above zero, so a large answer makes the
  next callers wait until the bucket has refilled.

A batch's worker processes split each limit evenly (:func:`split_limits`), so together they never
exceed it (DESIGN §11: a batch's limits are the batch's, never multiplied).

The seconds callers waited are counted on the limiter and, for whoever opened a
:func:`measure_waits` scope (a batch item does), in that scope: a batch's statistics report them
as ``rate_limited_s``.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dspex.backends.base import Backend, BackendHealth, PredictRequest, PredictResult

__all__ = [
    "RateLimitedBackend",
    "RateLimiter",
    "RateWaits",
    "measure_waits",
    "rate_limited",
    "split_limits",
]


class RateWaits:
    """Seconds waited for rate limits inside one :func:`measure_waits` scope."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = 0.0


_WAITS: contextvars.ContextVar[RateWaits | None] = contextvars.ContextVar(
    "dspex_rate_waits", default=None
)


class measure_waits:
    """Count the seconds every rate-limited call made in this context (and the tasks and threads
    it starts, which copy the context) waits. A class, not a generator: a batch opens one per
    item."""

    __slots__ = ("_token", "waits")

    def __init__(self) -> None:
        self.waits = RateWaits()
        self._token: contextvars.Token[RateWaits | None] | None = None

    def __enter__(self) -> RateWaits:
        self._token = _WAITS.set(self.waits)
        return self.waits

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _WAITS.reset(self._token)


class _Bucket:
    """A token bucket: at most ``capacity``, refilled at ``rate`` a second; may go negative."""

    __slots__ = ("capacity", "level", "rate", "updated")

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until the level is above ``amount`` (0: now)."""
        short = amount - self.level
        return short / self.rate if short > 0 else 0.0


class RateLimiter:
    """Turns for calls under ``rpm`` requests and ``tpm`` tokens a minute (either may be off).

    Safe to share between the tasks of one event loop and between threads; it holds no loop.

    Args:
        rpm: requests per minute (``None``: no request limit).
        tpm: tokens per minute, prompt and completion together (``None``: no token limit).
        clock: monotonic seconds (tests pass a fake one).
        sleep: how to wait (tests pass one that moves the fake clock).
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._requests = _Bucket(rpm, now) if rpm is not None else None
        self._tokens = _Bucket(tpm, now) if tpm is not None else None
        self._lock = threading.Lock()
        self.waited_s = 0.0
        self.calls = 0

    def _reserve(self) -> float:
        """Take the next turn; returns the seconds to wait for it."""
        with self._lock:
            now = self._clock()
            wait = 0.0
            requests = self._requests
            if requests is not None:
                requests.refill(now)
                # the request takes its unit now: later callers line up behind it
                wait = requests.wait_for(1.0)
                requests.level -= 1.0
            tokens = self._tokens
            if tokens is not None:
                tokens.refill(now)
                # tokens are taken when the answer says how many; start once the level is > 0
                wait = max(wait, tokens.wait_for(1e-9))
            self.calls += 1
            return wait

    def _give_back(self) -> None:
        with self._lock:
            if self._requests is not None:
                self._requests.level = min(self._requests.capacity, self._requests.level + 1.0)

    async def acquire(self) -> float:
        """Wait for this call's turn; returns the seconds waited.

        A caller cancelled while waiting gives its turn back.
        """
        wait = self._reserve()
        if wait <= 0:
            return 0.0
        try:
            await self._sleep(wait)
        except BaseException:
            self._give_back()
            raise
        with self._lock:
            self.waited_s += wait
        waits = _WAITS.get()
        if waits is not None:
            waits.seconds += wait
        return wait

    def spend(self, tokens: int) -> None:
        """Take ``tokens`` a call used from the token bucket (no-op without ``tpm``)."""
        if self._tokens is None or tokens <= 0:
            return
        with self._lock:
            self._tokens.refill(self._clock())
            self._tokens.level -= tokens


class RateLimitedBackend:
    """``inner`` behind a :class:`RateLimiter`: each call waits for its turn, then its tokens are
    counted. Health and closing go straight to ``inner``."""

    def __init__(self, inner: Backend, limiter: RateLimiter) -> None:
        self.name = inner.name
        self.inner = inner
        self.limiter = limiter

    def __repr__(self) -> str:
        return f"RateLimitedBackend({self.inner!r}, rpm={self.limiter.rpm}, tpm={self.limiter.tpm})"

    async def complete(self, request: PredictRequest) -> PredictResult:
        await self.limiter.acquire()
        result = await self.inner.complete(request)
        if self.limiter.tpm is not None:
            self.limiter.spend(sum(u.total_tokens for u in result.usage.values()))
        return result

    async def health(self) -> BackendHealth:
        return await self.inner.health()

    async def aclose(self) -> None:
        await self.inner.aclose()


class _RateLimitedLMBackend(RateLimitedBackend):
    """A rate-limited backend whose inner backend has a ``dspy.LM``. A ``dspy`` module in a
    coordinator group calls that LM through the group, which takes its turn from
    :attr:`limiter` first; a ``dspy`` module on the plain backend uses the LM directly, so its
    calls are not limited."""

    @property
    def lm(self) -> Any:
        return getattr(self.inner, "lm")  # noqa: B009 - a property that may build the LM


def rate_limited(inner: Backend, rpm: float | None, tpm: float | None) -> Backend:
    """``inner`` itself without limits, else wrapped in a :class:`RateLimitedBackend`."""
    if rpm is None and tpm is None:
        return inner
    from dspex.backends.dspy_lm import has_lm

    limiter = RateLimiter(rpm, tpm)
    if has_lm(inner):
        return _RateLimitedLMBackend(inner, limiter)
    return RateLimitedBackend(inner, limiter)


def split_limits(backends: Mapping[str, Mapping[str, Any]], shares: int) -> dict[str, Any]:
    """The ``[backends.*]`` settings with each ``rpm`` and ``tpm`` divided by ``shares`` (the
    worker processes of a batch), so that together they keep the limit."""
    if shares <= 1:
        return dict(backends)
    split: dict[str, Any] = {}
    for name, config in backends.items():
        changed = dict(config)
        for key in ("rpm", "tpm"):
            if changed.get(key) is not None:
                changed[key] = changed[key] / shares
        split[name] = changed
    return split

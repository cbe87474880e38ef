"""The seam where one module call meets its timeout and retry policy.

:class:`PolicyCaller` runs an async call with a per-attempt timeout and retries the retryable
failures (:func:`dspex.errors.is_retryable`) with exponential backoff and jitter, honouring a
provider's ``Retry-After``. It is deliberately small: the resilience layer replaces it (the engine
takes any :class:`CallExecutor`) with breakers, failover and deadlines across backends.

Time is the running loop's clock and sleeps are ``asyncio.sleep``, so fake-time tests (looptime)
spend no real time on backoff.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from dspex.engine.spec import RetrySpec
from dspex.errors import BackendError, DeadlineExceeded, DspexTimeoutError, is_retryable

__all__ = ["Attempts", "CallExecutor", "PolicyCaller", "backoff_interval"]

T = TypeVar("T")


@dataclass(slots=True)
class Attempts:
    """How many attempts a call made (filled in by the executor, read even when it raised)."""

    count: int = 0


class CallExecutor(Protocol):
    """Runs ``call`` under ``policy``; ``attempt_timeout`` is seconds per attempt or ``None``.

    An ``async def __call__`` fits; so does a plain method returning an awaitable (the engine
    awaits the result at once), which can hand back ``call()`` itself when there is nothing to
    add.
    """

    def __call__(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        policy: RetrySpec,
        attempt_timeout: float | None,
        attempts: Attempts,
        label: str,
    ) -> Awaitable[T]: ...


def backoff_interval(policy: RetrySpec, retry_number: int, rng: random.Random | None) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    With ``rng`` a random share of up to ``policy.jitter`` of the wait is added; without it the
    result is the wait before jitter (the least it can be).
    """
    growth = policy.backoff_factor ** (retry_number - 1)
    base = min(policy.max_interval, policy.initial_interval * growth)
    if rng is None or not policy.jitter:
        return base
    return base + rng.uniform(0.0, policy.jitter * base)


class PolicyCaller:
    """The default :class:`CallExecutor`: per-attempt timeout, retries with backoff and jitter.

    Args:
        rng: the random source for jitter (seed it for reproducible waits).
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        policy: RetrySpec,
        attempt_timeout: float | None,
        attempts: Attempts,
        label: str,
    ) -> Awaitable[T]:
        """Start ``call`` under ``policy``; await the result.

        Raises:
            DspexTimeoutError: an attempt took longer than ``attempt_timeout``.
            DeadlineExceeded: the policy's deadline was spent.
            Exception: the last attempt's error when retries are exhausted or it is permanent.
        """
        if policy.max_attempts == 1 and policy.deadline is None and attempt_timeout is None:
            # One plain attempt, the common case: the call itself, with no wrapper coroutine,
            # timer or retry machinery around it.
            attempts.count += 1
            return call()
        return self._run(call, policy, attempt_timeout, attempts, label)

    async def _run(
        self,
        call: Callable[[], Awaitable[T]],
        policy: RetrySpec,
        attempt_timeout: float | None,
        attempts: Attempts,
        label: str,
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline_at = loop.time() + policy.deadline if policy.deadline is not None else None

        async def attempt() -> T:
            attempts.count += 1
            limit = attempt_timeout
            capped_by_deadline = False
            if deadline_at is not None:
                left = deadline_at - loop.time()
                if limit is None or left < limit:
                    limit, capped_by_deadline = max(left, 0.0), True
            if limit is None:
                return await call()
            try:
                async with asyncio.timeout(limit):
                    return await call()
            except TimeoutError:
                if capped_by_deadline:
                    raise DeadlineExceeded(
                        f"{label}: deadline of {policy.deadline:g}s spent after "
                        f"{attempts.count} attempt(s)"
                    ) from None
                raise DspexTimeoutError(f"{label} timed out after {limit:g}s") from None

        if policy.max_attempts == 1 and deadline_at is None:
            return await attempt()  # nothing to retry: skip the retry machinery's overhead

        def wait(state: RetryCallState, rng: random.Random | None = self._rng) -> float:
            interval = backoff_interval(policy, state.attempt_number, rng)
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            if isinstance(exc, BackendError) and exc.retry_after is not None:
                interval = max(interval, exc.retry_after)
            return interval

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= policy.max_attempts:
                return True
            if deadline_at is None:
                return False
            # Do not start a wait that would end past the deadline: fail with the real error now.
            return loop.time() + wait(state, None) >= deadline_at

        retrying = AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(is_retryable),
            reraise=True,
            sleep=asyncio.sleep,
        )
        return await retrying(attempt)

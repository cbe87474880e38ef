"""The retry policy, the one retry loop, and the clock it waits on.

:class:`RetryPolicy` is the one model of a retry policy (names as in LangGraph/Temporal). The same
model is a module's ``retry:`` in a program spec, a ``[coordinators.NAME.retry]`` table in
``dspex.toml``, a :class:`~dspex.resilience.Coordinator`'s ``policy`` and the waits between a
batch's item retries. :meth:`RetryPolicy.retrying` builds the one retry loop (tenacity, with every
tenacity parameter given: none of its defaults is relied on); the engine's module calls, the
coordinator and the batch runner all run on it.

Waits: before retry ``n`` (1 for the first retry) the loop waits
``min(max_interval, initial_interval * backoff_factor ** (n - 1))``, reduced by a random share of
up to ``jitter`` of itself, so concurrent callers spread out and a wait never exceeds
``max_interval``. A provider's ``Retry-After`` is a floor: it is honoured even above
``max_interval`` (the provider knows when it will take calls again), but never above
``max_retry_after`` (60 s by default), so a hostile or buggy header cannot park a call for hours.
``max_retry_after`` is the only cap on ``Retry-After``: the backends record what the provider
said, the policy decides how much of it to honour.

How retries compose, and the bound on backend calls
---------------------------------------------------

A batch item runs a program; each module of it that uses a backend makes predictor calls. Three
policies apply, nested, and exactly one of the two inner ones governs a given call:

1. **A module on a plain backend** (``mock``, ``dspy``, ``openai``): the module's ``retry`` policy
   makes up to its ``max_attempts`` attempts. A module that declares no ``retry`` gets the
   engine's default: a :class:`~dspex.Runtime` gives it ``[defaults.retry]`` (3 attempts unless
   configured otherwise), a bare :class:`~dspex.engine.engine.Engine` one attempt.
2. **A module on a coordinator group**: the group's ``[coordinators.NAME.retry]`` policy makes up
   to its ``max_attempts`` backend attempts, across the group's backends and failovers. The
   module's own ``retry`` then makes a single attempt (its ``timeout`` and ``deadline`` still
   bound the call): the group's loop is the one loop, never wrapped in another.
3. **A batch's** ``max_retries``: the whole item runs again, up to ``max_retries`` more times,
   when it failed in a retryable way (:func:`dspex.errors.is_retryable` of the failed module's
   error), on this same loop: its waits are a policy of 0.5 s doubling up to 10 s, jitter 0.2.

So one predictor call of one batch item makes at most ``(1 + max_retries) × A`` backend calls,
where ``A`` is the group's ``max_attempts`` when the module names a group, else the module's.
(A ``dspy`` module makes as many predictor calls per run as its code does; the bound holds for
each of them.)
:func:`calls_bound` computes it; the engine reports it per module
(:func:`dspex.engine.policy.call_budgets`) and a batch records it in its config (``calls_bound``).
An open circuit is skipped without a call, so it only lowers the count.

:class:`Clock` is what the loop reads time from and sleeps on. :class:`LoopClock` (the default)
uses the running event loop, so fake-time tests (looptime) spend no real time; tests may also
inject their own.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError
from tenacity import AsyncRetrying, RetryCallState

from dspex.errors import BackendError, ConfigError, ErrorDetail

__all__ = ["Clock", "LoopClock", "RetryPolicy", "calls_bound", "problems_of"]

MAX_ATTEMPTS = 1000
"""The most attempts one policy may allow."""


@runtime_checkable
class Clock(Protocol):
    """Monotonic time in seconds and a way to wait on it."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's clock (``loop.time()``) and ``asyncio.sleep``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RetryPolicy(BaseModel):
    """How often and how patiently a call is retried (see the module docstring).

    Attributes:
        max_attempts: attempts in all, including the first (1 = no retry). For a coordinator
            group, backend attempts across all its backends.
        initial_interval: seconds before the first retry.
        backoff_factor: multiplier per retry (>= 1).
        max_interval: cap on one backoff wait, in seconds.
        jitter: fraction in [0, 1] of each wait removed at random.
        deadline: seconds all attempts and waits together may take, or ``None``.
        max_retry_after: the longest provider ``Retry-After`` honoured, in seconds.

    Validation is pydantic's, strict (no text for numbers) and every problem named at once:
    inside a program spec or ``dspex.toml`` a bad value is reported with that document's other
    problems, at its path; :meth:`from_mapping` raises :class:`~dspex.errors.ConfigError`.

    Example:
        >>> RetryPolicy(max_attempts=4, initial_interval=0.2, jitter=0.0).delay(2)
        0.4
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    max_attempts: int = Field(default=3, ge=1, le=MAX_ATTEMPTS)
    initial_interval: float = Field(default=0.5, ge=0, allow_inf_nan=False)
    backoff_factor: float = Field(default=2.0, ge=1, allow_inf_nan=False)
    max_interval: float = Field(default=30.0, ge=0, allow_inf_nan=False)
    jitter: float = Field(default=0.2, ge=0, le=1, allow_inf_nan=False)
    deadline: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_retry_after: float = Field(default=60.0, ge=0, allow_inf_nan=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | RetryPolicy) -> RetryPolicy:
        """Build from a mapping (a ``[coordinators.X.retry]`` table); missing names keep their
        defaults. A policy is returned as it is.

        Raises:
            ConfigError: an unknown key or a value out of range.
        """
        if isinstance(data, RetryPolicy):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f"a retry policy must be a table, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except PydanticValidationError as exc:
            raise ConfigError(f"invalid retry policy: {problems_of(exc)}") from None

    # --- waits ----------------------------------------------------------------------------

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (1 for the first retry).

        Without ``rng`` the wait before jitter (the longest it can be) is returned.
        """
        exponent = max(retry_number - 1, 0)
        try:
            base = self.initial_interval * self.backoff_factor**exponent
        except OverflowError:
            base = math.inf
        base = min(self.max_interval, base)
        if rng is None or not self.jitter:
            return base
        return base * (1.0 - self.jitter * rng.random())

    def honoured_retry_after(self, retry_after: float | None) -> float:
        """How much of a provider's ``Retry-After`` is honoured: at most ``max_retry_after``
        (0 when there is none)."""
        if retry_after is None or not retry_after > 0:
            return 0.0
        return min(retry_after, self.max_retry_after)

    def delay(
        self,
        retry_number: int,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """The backoff wait before retry ``retry_number``, never below a provider's
        ``retry_after`` (as far as :meth:`honoured_retry_after` goes)."""
        return max(self.backoff(retry_number, rng), self.honoured_retry_after(retry_after))

    # --- the loop -------------------------------------------------------------------------

    def retrying(
        self,
        *,
        retry: Callable[[RetryCallState], bool],
        wait: Callable[[RetryCallState], float] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        deadline_at: float | None = None,
    ) -> AsyncRetrying:
        """The one retry loop: a tenacity ``AsyncRetrying`` under this policy.

        Call it as ``await policy.retrying(...)(fn, *args)``: ``fn`` runs until it succeeds,
        ``retry`` says no, or the policy is spent; then its last result is returned or its last
        exception raised as it is (never tenacity's ``RetryError``).

        Args:
            retry: which outcomes are retried (``retry_if_exception(is_retryable)``,
                ``retry_if_result(...)``, …).
            wait: seconds before the next attempt. Default: :meth:`delay` of the attempt
                number, honouring the ``retry_after`` of a failed attempt's
                :class:`~dspex.errors.BackendError`.
            clock: what the waits sleep on and the deadline is read from (default: the loop's).
            rng: the random source for jitter (default: none, so no jitter).
            deadline_at: the clock time past which no wait may end: the loop stops with the
                last outcome rather than start such a wait. Cutting an attempt short at the
                deadline is the caller's part.

        Stops after :attr:`max_attempts` attempts, whichever caller counts them.
        """
        clock = clock or LoopClock()
        now = clock.now
        max_attempts = self.max_attempts
        planned: dict[int, float] = {}  # the wait after each attempt, drawn once

        def default_wait(state: RetryCallState) -> float:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None and outcome.failed else None
            retry_after = exc.retry_after if isinstance(exc, BackendError) else None
            return self.delay(state.attempt_number, retry_after, rng)

        choose = wait or default_wait

        def planned_wait(state: RetryCallState) -> float:
            number = state.attempt_number
            if number not in planned:
                planned[number] = choose(state)
            return planned[number]

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= max_attempts:
                return True
            return deadline_at is not None and now() + planned_wait(state) >= deadline_at

        return AsyncRetrying(
            sleep=clock.sleep,
            stop=stop,
            wait=planned_wait,
            retry=retry,
            before=_nothing,
            after=_nothing,
            before_sleep=None,
            reraise=True,
            retry_error_callback=_last_outcome,
        )


def calls_bound(attempts: int, max_retries: int = 0) -> int:
    """The most backend calls one predictor call of one batch item can make.

    ``attempts`` is the inner budget (the group's ``max_attempts`` for a module on a coordinator
    group, else the module's); ``max_retries`` is the batch's item retries.

    Example:
        >>> calls_bound(3, max_retries=2)
        9
    """
    return (1 + max_retries) * attempts


def problems_of(exc: PydanticValidationError) -> str:
    """A validation error's problems on one line, each led by the name it concerns."""
    details = ErrorDetail.from_pydantic(exc, root="(policy)")
    return "; ".join(f"{d.field}: {d.message}" for d in details)


def _nothing(state: RetryCallState) -> None:
    del state


def _last_outcome(state: RetryCallState) -> Any:
    """The loop is spent: hand back the last result, or raise the last exception as it is."""
    outcome = state.outcome
    assert outcome is not None  # the loop ends only after an attempt
    return outcome.result()

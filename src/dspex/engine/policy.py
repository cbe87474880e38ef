"""The seam where one module call meets its timeout and retry policy.

:class:`PolicyCaller` runs an async call with a per-attempt timeout and retries the retryable
failures (:func:`dspex.errors.is_retryable`) on the policy's one retry loop
(:meth:`~dspex.resilience.RetryPolicy.retrying`: backoff with jitter, a provider's
``Retry-After`` honoured up to the policy's ``max_retry_after``, the deadline). The engine takes
any :class:`CallExecutor`.

A module whose backend is a coordinator group runs under the group's loop alone:
:func:`module_policy` gives it a single attempt of its own (see
:mod:`dspex.resilience.policy` for how module, group and batch item retries compose), and
:func:`call_budgets` says, per module, how many backend calls one predictor call may make.

Time is the running loop's clock and sleeps are ``asyncio.sleep``, so fake-time tests (looptime)
spend no real time on backoff.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from tenacity import retry_if_exception

from dspex.backends.base import Backend
from dspex.engine.spec import MODULE_MAX_ATTEMPTS, ModuleSpec
from dspex.errors import DeadlineExceeded, DspexTimeoutError, error_code, is_retryable
from dspex.resilience.coordinator import Coordinator
from dspex.resilience.policy import LoopClock, RetryPolicy, calls_bound

if TYPE_CHECKING:
    from dspex.engine.program import Program

__all__ = [
    "Attempts",
    "CallBudget",
    "CallExecutor",
    "PolicyCaller",
    "call_budgets",
    "default_timeout",
    "module_policy",
]

T = TypeVar("T")

_BACKENDLESS_KINDS = frozenset({"python", "retrieve"})
_DEFAULT_POLICY = RetryPolicy(max_attempts=MODULE_MAX_ATTEMPTS)


@dataclass(slots=True)
class Attempts:
    """How many attempts a call made (filled in by the executor, read even when it raised).

    Attributes:
        count: attempts made.
        failed: ``(started, ended, error code)`` on the event loop's clock of each attempt that
            failed (the last one too, if it did), when the executor times them
            (:class:`PolicyCaller` does when it may retry; ``None`` until one fails).
        last_started: when the last attempt started (loop clock), when timed so.
    """

    count: int = 0
    failed: list[tuple[float, float, str]] | None = None
    last_started: float | None = None


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
        policy: RetryPolicy,
        attempt_timeout: float | None,
        attempts: Attempts,
        label: str,
    ) -> Awaitable[T]: ...


def module_policy(
    spec: ModuleSpec, backends: Mapping[str, Backend], default: RetryPolicy | None = None
) -> RetryPolicy:
    """The policy a module's own loop runs under.

    The module's declared policy (when it declares none: ``default`` for a module that calls a
    backend, else one attempt), except on a coordinator group: the group's loop makes the
    attempts, so the module's makes a single one (keeping its deadline) instead of multiplying
    them.
    """
    policy = spec.retry or _default_policy(spec, default)
    if (
        policy.max_attempts > 1
        and spec.kind not in _BACKENDLESS_KINDS
        and isinstance(backends.get(spec.backend_name), Coordinator)
    ):
        return _single_attempt(policy)
    return policy


def _default_policy(spec: ModuleSpec, default: RetryPolicy | None) -> RetryPolicy:
    """The policy of a module that declares none: ``default`` only for a backend call."""
    if default is None or spec.kind in _BACKENDLESS_KINDS:
        return _DEFAULT_POLICY
    return default


def default_timeout(spec: ModuleSpec, default: float | None) -> float | None:
    """Seconds one attempt of the module may take: its own ``timeout``, else ``default`` when
    it calls a backend, else none."""
    if spec.timeout is not None:
        return spec.timeout
    return None if spec.kind in _BACKENDLESS_KINDS else default


@functools.lru_cache(maxsize=256)
def _single_attempt(policy: RetryPolicy) -> RetryPolicy:
    return policy.model_copy(update={"max_attempts": 1})


@dataclass(frozen=True, slots=True)
class CallBudget:
    """How many backend calls one predictor call of a module may make.

    Attributes:
        attempts: backend calls per predictor call in one run of the program.
        governed_by: whose ``max_attempts`` that is: ``"module"`` (the module's ``retry``, 1
            when it has none) or ``"group NAME"`` (the coordinator group it names).
    """

    attempts: int
    governed_by: str

    def calls_bound(self, max_retries: int = 0) -> int:
        """The most backend calls per predictor call of one batch item with ``max_retries``
        item retries: ``(1 + max_retries) × attempts``."""
        return calls_bound(self.attempts, max_retries)


def call_budgets(
    program: Program,
    backends: Mapping[str, Backend],
    default: RetryPolicy | None = None,
) -> dict[str, CallBudget]:
    """The :class:`CallBudget` of every module of ``program`` that calls a backend.

    Args:
        program: the program.
        backends: the backends its modules name (coordinator groups included), as the engine
            has them.
        default: the policy of modules that declare none (the engine's ``default_retry``).
    """
    budgets: dict[str, CallBudget] = {}
    for name, spec in program.modules.items():
        if spec.kind in _BACKENDLESS_KINDS:
            continue
        backend = backends.get(spec.backend_name)
        if isinstance(backend, Coordinator):
            budgets[name] = CallBudget(backend.policy.max_attempts, f"group {backend.name}")
        else:
            policy = spec.retry or _default_policy(spec, default)
            budgets[name] = CallBudget(policy.max_attempts, "module")
    return budgets


class PolicyCaller:
    """The default :class:`CallExecutor`: per-attempt timeout, retries on the policy's loop.

    Args:
        rng: the random source for jitter (seed it for reproducible waits).
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._clock = LoopClock()

    def __call__(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        policy: RetryPolicy,
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
        policy: RetryPolicy,
        attempt_timeout: float | None,
        attempts: Attempts,
        label: str,
    ) -> T:
        clock = self._clock
        deadline_at = clock.now() + policy.deadline if policy.deadline is not None else None

        async def attempt() -> T:
            started = attempts.last_started = clock.now()
            try:
                return await timed()
            except Exception as exc:
                if attempts.failed is None:
                    attempts.failed = []
                attempts.failed.append((started, clock.now(), error_code(exc)))
                raise

        async def timed() -> T:
            attempts.count += 1
            limit = attempt_timeout
            capped_by_deadline = False
            if deadline_at is not None:
                left = deadline_at - clock.now()
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

        # The first attempt runs on its own: most calls succeed at once, and building the
        # retry machinery for them would cost more than the call to a fast backend.
        try:
            return await attempt()
        except Exception as exc:
            if policy.max_attempts == 1 or not is_retryable(exc):
                raise
            first: Exception | None = exc

        async def again() -> T:
            # the loop's first attempt is the one already made: hand it its outcome
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return await attempt()

        retrying = policy.retrying(
            retry=retry_if_exception(is_retryable),
            clock=clock,
            rng=self._rng,
            deadline_at=deadline_at,
        )
        result: T = await retrying(again)
        return result

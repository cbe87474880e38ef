"""The coordinator: one predictor call across a group of backends, with retries and breakers.

A :class:`Coordinator` is itself a :class:`~dspex.backends.base.Backend`, so the engine uses a
coordinator group exactly like a single backend. Each call runs ONE retry loop over the group
(the policy's loop, :meth:`~dspex.resilience.RetryPolicy.retrying`); a module that names the
group makes one attempt of its own around it, so the group's ``max_attempts`` is the call's whole
budget (see :mod:`dspex.resilience.policy` for how it composes with a batch's item retries):

- The strategy orders the group for the call: ``failover`` (as configured), ``round_robin``
  (the starting backend rotates call by call) or ``least_latency`` (fastest recent successes
  first; a backend with no successes yet goes first so it gets measured).
- A *round* tries each admitted backend at most once, in that order, without waiting between
  backends: when the primary fails, the secondary is asked at once. Backends whose breaker is
  open are skipped (no waiting, no attempt). After a round the loop waits the policy's backoff
  (and any ``Retry-After`` of the backend it goes back to, up to the policy's
  ``max_retry_after``) and starts the next round.
- A retryable failure (rate limit, 5xx, connection, timeout, a malformed reply) moves on. An
  auth or quota error moves on and excludes that backend for the rest of the call (never
  retried on it). A bad request, a parse error (the backend's own repair already ran: it counts
  once) or a validation error ends the call with that error: another backend would get the
  same input.
- A member that fails with ``context_window_exceeded`` (the input is too long for its model)
  hands the call to the group's ``context_window_fallback`` backends, in order, at once, instead
  of failing it; a fallback whose window is too small as well is passed over like the member.
- ``max_attempts`` counts backend attempts across the group; ``deadline`` bounds the whole
  call, waits included: an attempt in flight is cut off when it is spent, and a wait that would
  end past it is not started.

When nothing is left to try the call raises :class:`~dspex.errors.AllBackendsFailedError` (or
:class:`~dspex.errors.DeadlineExceeded` when time ran out), whose ``attempts`` say which backends
were tried and why each failed — open circuits included. An ``AllBackendsFailedError`` whose
every failure was retryable is itself retryable (a batch may run the item again later); one
final cause (an auth error) makes it final, and a call that asked no backend (every circuit
open) is final too. Every attempt is reported to ``on_attempt`` as it ends and returned on the
result's ``attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import RetryCallState, retry_if_exception_type

from dspex._strategies import COORDINATOR_STRATEGIES, CoordinatorStrategy
from dspex.backends.base import (
    Backend,
    BackendAttempt,
    BackendHealth,
    LMExchange,
    PredictRequest,
    PredictResult,
    Usage,
)
from dspex.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendError,
    CircuitOpenError,
    ConfigError,
    ContextWindowError,
    DeadlineExceeded,
    FailedAttempt,
    error_code,
    is_retryable,
    should_failover,
)
from dspex.records import AttemptOutcome
from dspex.resilience.breaker import BreakerRegistry, CircuitBreaker
from dspex.resilience.classify import trips_breaker
from dspex.resilience.policy import Clock, LoopClock, RetryPolicy

__all__ = ["ATTEMPTS_ATTRIBUTE", "AttemptCallback", "Coordinator", "Strategy", "attempts_of"]

T = TypeVar("T")

Strategy = CoordinatorStrategy
STRATEGIES = COORDINATOR_STRATEGIES

AttemptCallback = Callable[[BackendAttempt], Awaitable[None] | None]
"""Called with every attempt as it ends (sync or async)."""

ATTEMPTS_ATTRIBUTE = "attempt_details"
"""The attribute a failed call's exception carries its attempts on (see :func:`attempts_of`)."""

_HEALTH_TIMEOUT = 5.0
_LATENCY_ALPHA = 0.2  # weight of the newest sample in the latency average


@dataclass(slots=True)
class _Member:
    backend: Backend
    name: str
    breaker: CircuitBreaker
    latency_ms: float | None = None  # exponentially weighted average of successful attempts


class _Next(Exception):
    """Internal: this attempt failed and the loop goes on (after ``_Call.wait`` seconds)."""


def _asked_of(backend: Backend) -> LMExchange | None:
    """What is known of a failed call's request: the model its backend asks, when it says."""
    model = getattr(backend, "model", None)
    return LMExchange(messages=(), model=model) if isinstance(model, str) else None


def attempts_of(exc: BaseException) -> tuple[BackendAttempt, ...]:
    """The attempts a coordinator made before the call failed with ``exc`` (empty if unknown).

    A coordinator attaches them to whatever it raises (the failure of the whole call, or an
    error no other backend could fix), so a caller that only sees the exception can still
    record every attempt.
    """
    found = getattr(exc, ATTEMPTS_ATTRIBUTE, ())
    return found if isinstance(found, tuple) else ()


def _result_usage(result: Any) -> dict[str, Usage]:
    usage = getattr(result, "usage", None)
    return dict(usage) if isinstance(usage, dict) else {}


@dataclass(slots=True)
class _Call:
    """The state of one call through the loop."""

    op: Callable[[Backend], Awaitable[Any]]
    module: str
    order: list[_Member]
    deadline_at: float | None
    usage_of: Callable[[Any], dict[str, Usage]] = _result_usage
    attempts: list[BackendAttempt] = field(default_factory=list)
    failures: list[FailedAttempt] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)  # in this round
    excluded: set[str] = field(default_factory=set)  # for the rest of the call
    skipped: dict[str, str] = field(default_factory=dict)  # open circuits seen
    not_before: dict[str, float] = field(default_factory=dict)  # Retry-After per backend
    round: int = 1
    wait: float = 0.0
    next_round: bool = False
    first: int = 0  # attempts already in ``attempts`` when the call began (a shared list)

    @property
    def made(self) -> int:
        """Attempts this call made."""
        return len(self.attempts) - self.first


class Coordinator:
    """A group of backends answering as one backend.

    Args:
        name: the group's name (configuration key, records, errors).
        backends: the members, in priority order (what ``failover`` follows).
        strategy: ``failover``, ``round_robin`` or ``least_latency``.
        policy: retries, backoff and the overall deadline.
        breakers: the breaker registry (share one across groups so a backend has one breaker).
        clock: monotonic time and sleep for backoff and deadlines (default: the event loop's).
        on_attempt: called with every attempt as it ends (sync or async).
        rng: the random source for jitter (seed it for reproducible waits).
        owns_backends: whether :meth:`aclose` closes the members.
        context_window_fallback: backends a call goes to, in order, when a member failed with
            ``context_window_exceeded`` (members or not; closed with the members).

    Raises:
        ConfigError: no backends, duplicate names or an unknown strategy.

    Example:
        >>> group = Coordinator(
        ...     "main",
        ...     [primary, secondary],
        ...     policy=RetryPolicy(max_attempts=4, deadline=30),
        ... )  # doctest: +SKIP
        >>> result = await group.complete(request)  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        backends: Sequence[Backend],
        *,
        strategy: Strategy = "failover",
        policy: RetryPolicy | None = None,
        breakers: BreakerRegistry | None = None,
        clock: Clock | None = None,
        on_attempt: AttemptCallback | None = None,
        rng: random.Random | None = None,
        owns_backends: bool = True,
        context_window_fallback: Sequence[Backend] = (),
    ) -> None:
        if not backends:
            raise ConfigError(f"coordinator {name!r} needs at least one backend")
        names = [b.name for b in backends]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"coordinator {name!r}: duplicate backend(s) {duplicates}")
        if strategy not in STRATEGIES:
            raise ConfigError(
                f"coordinator {name!r}: unknown strategy {strategy!r} "
                f"(choose from {', '.join(STRATEGIES)})"
            )
        self.name = name
        self.strategy: Strategy = strategy
        self.policy = policy or RetryPolicy()
        self.breakers = breakers or BreakerRegistry()
        self.clock: Clock = clock or LoopClock()
        self.on_attempt = on_attempt
        self.owns_backends = owns_backends
        self._rng = rng or random.Random()
        self._members = [_Member(b, b.name, self.breakers.get(b.name)) for b in backends]
        by_name = {m.name: m for m in self._members}
        self._fallbacks = [
            by_name.get(b.name) or _Member(b, b.name, self.breakers.get(b.name))
            for b in context_window_fallback
        ]
        self._turn = 0

    def __repr__(self) -> str:
        names = ", ".join(m.name for m in self._members)
        return f"Coordinator({self.name!r}, [{names}], strategy={self.strategy!r})"

    @property
    def backends(self) -> list[Backend]:
        return [m.backend for m in self._members]

    @property
    def context_window_fallback(self) -> list[Backend]:
        """Where a call too long for a member goes (see the module docstring)."""
        return [m.backend for m in self._fallbacks]

    def latencies(self) -> dict[str, float | None]:
        """The recent average latency (ms) of each member's successful attempts."""
        return {m.name: m.latency_ms for m in self._members}

    # --- Backend protocol -----------------------------------------------------------------

    async def complete(self, request: PredictRequest) -> PredictResult:
        """Answer ``request`` with the first member that succeeds, retrying as the policy says.

        Raises:
            AllBackendsFailedError: every admitted backend failed (or every circuit is open)
                and no attempt is left; ``attempts`` says why each failed.
            DeadlineExceeded: the policy's deadline was spent; ``attempts`` as above.
            BackendError: a failure no other backend can fix (bad request, parse error) is
                raised as it is.
        """
        call = self._start(_complete_op(request), request.module, self._order())
        result: PredictResult = await self._run(call)
        return dataclasses.replace(result, attempts=tuple(call.attempts))

    async def call(
        self,
        op: Callable[[Backend], Awaitable[T]],
        *,
        module: str = "",
        accepts: Callable[[Backend], bool] | None = None,
        usage: Callable[[T], Mapping[str, Usage]] | None = None,
        attempts: list[BackendAttempt] | None = None,
    ) -> T:
        """Run ``op`` on the group's members under the same loop, breakers and records as
        :meth:`complete` (which is this with ``op = backend.complete(request)``).

        This is how calls other than a predictor call get the group's protection: an opaque
        ``dspy`` module's raw LM calls, for instance (see :mod:`dspex.backends.dspy_lm`).

        Args:
            op: one attempt on one member; raises a :mod:`dspex.errors` error when it fails.
            module: the module making the call (for the attempt records).
            accepts: which members can run ``op`` (default: all); the others are skipped.
            usage: the token usage of a successful result, for its attempt record.
            attempts: a list every attempt is appended to as it ends (also on failure).

        Raises:
            ConfigError: no member accepts the call.
            AllBackendsFailedError: as for :meth:`complete`.
            DeadlineExceeded: as for :meth:`complete`.
        """
        order = self._order()
        if accepts is not None:
            order = [m for m in order if accepts(m.backend)]
            if not order:
                raise ConfigError(f"coordinator {self.name!r}: no backend can take this call")
        call = self._start(op, module, order)
        if usage is not None:
            call.usage_of = lambda result: dict(usage(result))
        if attempts is not None:
            call.attempts, call.first = attempts, len(attempts)
        result: T = await self._run(call)
        return result

    def _start(
        self, op: Callable[[Backend], Awaitable[Any]], module: str, order: list[_Member]
    ) -> _Call:
        deadline = self.policy.deadline
        return _Call(
            op, module, order, self.clock.now() + deadline if deadline is not None else None
        )

    async def _run(self, call: _Call) -> Any:
        # the policy's one loop; this call plans each wait itself (failover within a round
        # goes on at once, a new round backs off) and enforces the deadline on its own
        retrying = self.policy.retrying(
            retry=retry_if_exception_type(_Next),
            wait=lambda state: _wait_of(call, state),
            clock=self.clock,
        )
        try:
            return await retrying(self._attempt, call)
        except Exception as exc:
            # the caller records attempts from the exception when the call failed
            with contextlib.suppress(AttributeError):
                setattr(exc, ATTEMPTS_ATTRIBUTE, tuple(call.attempts[call.first :]))
            raise

    async def health(self) -> BackendHealth:
        """Each member's own health and its breaker's state.

        ``unhealthy`` when no member can take a call, ``degraded`` when some member is
        unhealthy or its breaker is not closed, else ``healthy``.
        """
        problems: list[str] = []
        try:
            await self.breakers.sync()
        except Exception as exc:  # the store is down: report it, show the local states
            problems.append(f"breaker states not synced: {error_code(exc)}: {exc}")
        members: dict[str, Any] = {}
        usable = 0
        degraded = False
        for member in self._members:
            try:
                async with asyncio.timeout(_HEALTH_TIMEOUT):
                    own = await member.backend.health()
            except TimeoutError:
                own = BackendHealth("unhealthy", f"health check took over {_HEALTH_TIMEOUT:g}s")
            state = member.breaker.state
            members[member.name] = {
                "status": own.status,
                "reason": own.reason,
                "breaker": state.to_dict(),
                "latency_ms": member.latency_ms,
            }
            if own.status != "unhealthy" and member.breaker.available():
                usable += 1
            if own.status != "healthy" or state.status.value != "closed":
                degraded = True
                problems.append(f"{member.name}: {own.status}, breaker {state.status.value}")
        details = {"strategy": self.strategy, "backends": members}
        if usable == 0:
            return BackendHealth("unhealthy", "no backend can take calls", details)
        if degraded or problems:
            return BackendHealth("degraded", "; ".join(problems), details)
        return BackendHealth("healthy", "", details)

    async def aclose(self) -> None:
        """Close the members (when the group owns them)."""
        if self.owns_backends:
            members = {id(m.backend): m.backend for m in (*self._members, *self._fallbacks)}
            for backend in members.values():
                await backend.aclose()

    # --- the loop -------------------------------------------------------------------------

    def _order(self) -> list[_Member]:
        members = self._members
        if self.strategy == "failover" or len(members) == 1:
            return members
        if self.strategy == "round_robin":
            start = self._turn % len(members)
            self._turn += 1
            return members[start:] + members[:start]
        # least_latency: unmeasured first (so they get measured), then fastest first
        return sorted(members, key=lambda m: -1.0 if m.latency_ms is None else m.latency_ms)

    async def _pick(self, call: _Call) -> tuple[_Member, int] | None:
        """The next member of this round whose breaker admits a call, with its permit."""
        for member in call.order:
            if member.name in call.tried or member.name in call.excluded:
                continue
            permit = await member.breaker.acquire()
            if permit is None:
                call.skipped[member.name] = "circuit open"
                call.tried.add(member.name)
                continue
            return member, permit
        return None

    async def _attempt(self, call: _Call) -> Any:
        if call.next_round:
            call.next_round = False
            call.round += 1
            call.tried.clear()
        picked = await self._pick(call)
        if picked is None:
            raise self._exhausted(call, None)
        member, permit = picked
        call.tried.add(member.name)
        clock = self.clock
        wall = time.time()
        started = clock.now()
        try:
            if call.deadline_at is None:
                result = await call.op(member.backend)
            else:
                left = call.deadline_at - started
                try:
                    async with asyncio.timeout(left):
                        result = await call.op(member.backend)
                except TimeoutError as exc:
                    if clock.now() < call.deadline_at:
                        raise  # the backend's own timeout, not ours
                    raise DeadlineExceeded(
                        f"{member.name}: the deadline of {self.policy.deadline:g}s was spent "
                        "while it answered"
                    ) from exc
        except asyncio.CancelledError:
            await member.breaker.record_ignored(permit)
            await self._record(call, member, wall, started, AttemptOutcome.CANCELLED, None, None)
            raise
        except Exception as exc:
            return await self._failed(call, member, permit, wall, started, exc)
        await member.breaker.record_success(permit)
        duration = (clock.now() - started) * 1000.0
        previous = member.latency_ms
        member.latency_ms = (
            duration if previous is None else previous + _LATENCY_ALPHA * (duration - previous)
        )
        await self._record(call, member, wall, started, AttemptOutcome.SUCCEEDED, None, result)
        return result

    async def _failed(
        self,
        call: _Call,
        member: _Member,
        permit: int,
        wall: float,
        started: float,
        exc: Exception,
    ) -> Any:
        """Account for a failed attempt, then raise what the loop does next."""
        if trips_breaker(exc):
            await member.breaker.record_failure(permit)
        else:
            await member.breaker.record_ignored(permit)
        await self._record(call, member, wall, started, AttemptOutcome.FAILED, exc, None)
        call.failures.append(
            FailedAttempt(member.name, error_code(exc), _message(exc), is_retryable(exc))
        )
        if isinstance(exc, DeadlineExceeded):
            raise self._deadline(call, exc)
        if isinstance(exc, ContextWindowError) and self._fallbacks:
            self._to_larger_window(call, member, exc)
            raise _Next() from exc
        if not should_failover(exc):
            raise exc  # the input or the answer is at fault: no backend can do better
        if isinstance(exc, AuthenticationError) or not is_retryable(exc):
            call.excluded.add(member.name)
        if isinstance(exc, BackendError) and exc.retry_after:
            honoured = self.policy.honoured_retry_after(exc.retry_after)
            call.not_before[member.name] = self.clock.now() + honoured
        if call.made >= self.policy.max_attempts:
            raise self._exhausted(call, exc)
        self._plan_next(call, exc)
        raise _Next() from exc

    def _to_larger_window(self, call: _Call, member: _Member, exc: Exception) -> None:
        """Send the rest of the call to the fallbacks not yet too small for it, at once;
        raise ``exc`` when none is left or the attempts are spent."""
        call.excluded.add(member.name)  # this input will not fit it on any retry
        left = [m for m in self._fallbacks if m.name not in call.excluded]
        if not left or call.made >= self.policy.max_attempts:
            raise exc
        call.order = left
        call.tried.clear()
        call.next_round = False
        call.wait = 0.0

    def _plan_next(self, call: _Call, exc: Exception) -> None:
        """Decide the wait before the next attempt, or raise when there is no next one."""
        now = self.clock.now()
        upcoming = self._peek(call, call.tried)
        wait = 0.0
        if upcoming is None:
            # the round is over: back off, then go round again
            upcoming = self._peek(call, set())
            if upcoming is None:
                raise self._exhausted(call, exc)
            call.next_round = True
            wait = self.policy.backoff(call.round, self._rng)
        wait = max(wait, call.not_before.get(upcoming.name, now) - now)
        if call.deadline_at is not None and now + wait >= call.deadline_at:
            raise self._deadline(call, exc)
        call.wait = wait

    def _peek(self, call: _Call, tried: set[str]) -> _Member | None:
        for member in call.order:
            if (
                member.name not in tried
                and member.name not in call.excluded
                and member.breaker.available()
            ):
                return member
        return None

    async def _record(
        self,
        call: _Call,
        member: _Member,
        wall: float,
        started: float,
        outcome: AttemptOutcome,
        exc: BaseException | None,
        result: Any,
    ) -> BackendAttempt:
        duration = (self.clock.now() - started) * 1000.0
        if exc is None:
            info = BackendAttempt(
                backend=member.name,
                attempt=len(call.attempts) + 1,
                outcome=outcome,
                started_at=wall,
                ended_at=wall + duration / 1000.0,
                duration_ms=duration,
                usage=call.usage_of(result) if result is not None else {},
                module=call.module,
                group=self.name,
                exchange=getattr(result, "exchange", None),
            )
        else:
            info = BackendAttempt(
                backend=member.name,
                attempt=len(call.attempts) + 1,
                outcome=outcome,
                started_at=wall,
                ended_at=wall + duration / 1000.0,
                duration_ms=duration,
                error_code=error_code(exc),
                error_message=_message(exc),
                status=getattr(exc, "status", None),
                retry_after=getattr(exc, "retry_after", None),
                module=call.module,
                group=self.name,
                exchange=_asked_of(member.backend),
            )
        call.attempts.append(info)
        if self.on_attempt is not None:
            done = self.on_attempt(info)
            if inspect.isawaitable(done):
                await done
        return info

    def _summary(self, call: _Call) -> list[FailedAttempt]:
        attempted = {f.backend for f in call.failures}
        opened = [
            FailedAttempt(name, CircuitOpenError.code, why)
            for name, why in call.skipped.items()
            if name not in attempted
        ]
        return [*call.failures, *opened]

    def _exhausted(self, call: _Call, exc: Exception | None) -> AllBackendsFailedError:
        attempts = self._summary(call)
        why = "; ".join(f"{a.backend}: {a.code}" for a in attempts) or "no backend admitted"
        count = call.made
        error = AllBackendsFailedError(
            f"coordinator {self.name!r}: every backend failed after {count} attempt(s) ({why})",
            attempts,
        )
        error.__cause__ = exc
        return error

    def _deadline(self, call: _Call, exc: Exception) -> DeadlineExceeded:
        attempts = self._summary(call)
        why = "; ".join(f"{a.backend}: {a.code}" for a in attempts)
        error = DeadlineExceeded(
            f"coordinator {self.name!r}: deadline of {self.policy.deadline:g}s spent after "
            f"{call.made} attempt(s) ({why})",
            attempts,
        )
        error.__cause__ = exc
        return error


def _complete_op(request: PredictRequest) -> Callable[[Backend], Awaitable[PredictResult]]:
    def op(backend: Backend) -> Awaitable[PredictResult]:
        return backend.complete(request)

    return op


def _wait_of(call: _Call, state: RetryCallState) -> float:
    del state  # the wait was planned when the attempt failed
    return call.wait


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else (str(exc) or type(exc).__name__)

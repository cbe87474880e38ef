"""Circuit breakers, one per backend, with their state persisted so every process sees it.

A breaker is ``closed`` (calls flow; outcomes go into a rolling window of the last
``window_size`` calls), ``open`` (no calls, for ``open_seconds``) or ``half_open`` (exactly one
probe call is admitted; its success closes the breaker, its failure opens it again).

It opens when, with at least ``minimum_calls`` outcomes in the window, the share of failures
reaches ``failure_rate_threshold``. What counts as a failure is decided by
:func:`dspex.resilience.classify.trips_breaker`; client errors and cancellations are reported
with :meth:`CircuitBreaker.on_ignored` and change nothing (except releasing the half-open probe).

Every admission returns a *permit* (the breaker's epoch); outcomes carry it back, and an outcome
whose permit predates the last transition is ignored, so a slow call admitted while closed
cannot close a breaker that opened meanwhile.

Persistence: the state is written to a :class:`BreakerStateStore` on transitions only, so a
closed breaker costs no I/O per call. :meth:`CircuitBreaker.sync` adopts the stored state
(another process may have opened the circuit); call it periodically and on ``health``. The
half-open "one probe" guarantee holds per process.

Time for ``open_seconds`` is wall-clock (``time.time``) so an ``opened_at`` written by one
process means the same in another; tests inject a fake.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

from dspex.errors import CircuitOpenError, ConfigError
from dspex.records import BreakerRecord
from dspex.resilience.classify import trips_breaker

if TYPE_CHECKING:
    from dspex.store.breakers import BreakerStore

__all__ = [
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStateStore",
    "BreakerStatus",
    "CircuitBreaker",
    "MemoryBreakerStore",
    "StoreBreakerStore",
]

T = TypeVar("T")

Permit = int
"""An admission ticket: the breaker's epoch when the call was admitted."""


class BreakerStatus(StrEnum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A breaker's state as persisted and shown by ``health``.

    Attributes:
        status: closed, open or half-open.
        failures: failures in the rolling window.
        calls: outcomes in the rolling window.
        opened_at: wall-clock time (epoch seconds) it last opened, while open or half-open.
    """

    status: BreakerStatus = BreakerStatus.CLOSED
    failures: int = 0
    calls: int = 0
    opened_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "state": self.status.value,
            "failures": self.failures,
            "calls": self.calls,
            "opened_at": self.opened_at,
        }


@runtime_checkable
class BreakerStateStore(Protocol):
    """Where breaker states live between processes."""

    async def load(self, name: str) -> BreakerState | None: ...

    async def save(self, name: str, state: BreakerState) -> None: ...


class MemoryBreakerStore:
    """A :class:`BreakerStateStore` in a dict (one process; tests).

    Attributes:
        saves: how many times a state was saved.
    """

    def __init__(self) -> None:
        self._states: dict[str, BreakerState] = {}
        self.saves = 0

    async def load(self, name: str) -> BreakerState | None:
        return self._states.get(name)

    async def save(self, name: str, state: BreakerState) -> None:
        self.saves += 1
        self._states[name] = state


class StoreBreakerStore:
    """A :class:`BreakerStateStore` over a dspex :class:`~dspex.store.base.Store` (the
    ``breakers`` table), so every process on the same database sees the same circuits."""

    def __init__(self, store: BreakerStore) -> None:
        self._store = store

    async def load(self, name: str) -> BreakerState | None:
        for record in await self._store.list_breakers():
            if record.backend == name:
                return _from_record(record)
        return None

    async def save(self, name: str, state: BreakerState) -> None:
        opened = (
            datetime.fromtimestamp(state.opened_at, UTC) if state.opened_at is not None else None
        )
        await self._store.save_breaker(
            BreakerRecord(
                backend=name,
                state=state.status.value,
                failure_count=state.failures,
                success_count=state.calls - state.failures,
                opened_at=opened,
            )
        )


def _from_record(record: BreakerRecord) -> BreakerState:
    return BreakerState(
        status=BreakerStatus(record.state),
        failures=record.failure_count,
        calls=record.failure_count + record.success_count,
        opened_at=record.opened_at.timestamp() if record.opened_at is not None else None,
    )


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a breaker opens and for how long.

    Attributes:
        failure_rate_threshold: share of failures in the window (0 < x <= 1) that opens it.
        minimum_calls: outcomes the window must hold before it may open.
        window_size: how many recent outcomes the rolling window keeps.
        open_seconds: how long it stays open before admitting a probe.

    Raises:
        ConfigError: a parameter is out of range.
    """

    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    window_size: int = 20
    open_seconds: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.failure_rate_threshold <= 1.0:
            problems.append("failure_rate_threshold must be in (0, 1]")
        if self.minimum_calls < 1:
            problems.append("minimum_calls must be >= 1")
        if self.window_size < self.minimum_calls:
            problems.append("window_size must be >= minimum_calls (else it can never open)")
        if self.open_seconds < 0:
            problems.append("open_seconds must be >= 0")
        if problems:
            raise ConfigError("invalid breaker config: " + "; ".join(problems))


class CircuitBreaker:
    """One backend's circuit breaker.

    The ``try_acquire``/``on_*`` methods are the pure state machine (no I/O; each returns whether
    the state changed). The async ``acquire``/``record_*`` methods do the same and persist the new
    state to the store when it changed.

    Args:
        name: the backend's name (the key in the store).
        config: thresholds and timings.
        store: where transitions are written (default: nowhere but memory).
        wall_time: the wall clock (epoch seconds); tests inject a fake.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        store: BreakerStateStore | None = None,
        wall_time: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self.store = store
        self._time = wall_time
        self._status = BreakerStatus.CLOSED
        self._window: deque[bool] = deque(maxlen=self.config.window_size)
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_out = False
        self._epoch = 0

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, {self._status.value})"

    # --- state ----------------------------------------------------------------------------

    @property
    def status(self) -> BreakerStatus:
        return self._status

    @property
    def state(self) -> BreakerState:
        """A snapshot of the current state."""
        return BreakerState(self._status, self._failures, len(self._window), self._opened_at)

    def available(self) -> bool:
        """Whether a call would be admitted now (changes nothing)."""
        if self._status is BreakerStatus.CLOSED:
            return True
        if self._status is BreakerStatus.HALF_OPEN:
            return not self._probe_out
        return self._cooled_down()

    def _cooled_down(self) -> bool:
        assert self._opened_at is not None
        return self._time() - self._opened_at >= self.config.open_seconds

    # --- the pure state machine -----------------------------------------------------------

    def try_acquire(self) -> tuple[Permit | None, bool]:
        """Admit a call: ``(permit or None when refused, whether the state changed)``."""
        if self._status is BreakerStatus.CLOSED:
            return self._epoch, False
        changed = False
        if self._status is BreakerStatus.OPEN:
            if not self._cooled_down():
                return None, False
            self._transition(BreakerStatus.HALF_OPEN)
            changed = True
        if self._probe_out:
            return None, changed
        self._probe_out = True
        return self._epoch, changed

    def on_success(self, permit: Permit) -> bool:
        """A call admitted with ``permit`` succeeded; returns whether the state changed."""
        if permit != self._epoch:
            return False
        if self._status is BreakerStatus.HALF_OPEN:
            self._transition(BreakerStatus.CLOSED)
            return True
        if self._status is BreakerStatus.CLOSED:
            self._push(False)
            return self._maybe_open()
        return False

    def on_failure(self, permit: Permit) -> bool:
        """A call admitted with ``permit`` failed in a way that counts; returns whether the
        state changed."""
        if permit != self._epoch:
            return False
        if self._status is BreakerStatus.HALF_OPEN:
            self._transition(BreakerStatus.OPEN)
            return True
        if self._status is BreakerStatus.CLOSED:
            self._push(True)
            return self._maybe_open()
        return False

    def _maybe_open(self) -> bool:
        # Judged after every outcome: a success that brings the window to its minimum volume
        # can reveal a failure rate that was already over the threshold.
        calls = len(self._window)
        if (
            calls >= self.config.minimum_calls
            and self._failures >= self.config.failure_rate_threshold * calls
        ):
            self._transition(BreakerStatus.OPEN)
            return True
        return False

    def on_ignored(self, permit: Permit) -> bool:
        """A call ended in a way that says nothing about the backend (client error,
        cancellation): only a half-open probe slot is released. Never changes the state."""
        if permit == self._epoch and self._status is BreakerStatus.HALF_OPEN:
            self._probe_out = False
        return False

    def adopt(self, state: BreakerState) -> bool:
        """Take ``state`` (from the store) as this breaker's; returns whether it differed.

        Only a different status or ``opened_at`` is adopted: window counts are per process and a
        closed breaker keeps its own.
        """
        if state.status is self._status and state.opened_at == self._opened_at:
            return False
        self._status = state.status
        self._opened_at = state.opened_at
        self._window.clear()
        if state.status is BreakerStatus.CLOSED:
            # The window's order is not persisted; its counts are, and they are what matters.
            successes = max(state.calls - state.failures, 0)
            self._window.extend([True] * state.failures + [False] * successes)
        self._failures = sum(self._window)
        self._probe_out = False
        self._epoch += 1
        return True

    def _push(self, failed: bool) -> None:
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._failures -= 1
        self._window.append(failed)
        if failed:
            self._failures += 1

    def _transition(self, status: BreakerStatus) -> None:
        self._status = status
        self._epoch += 1
        self._probe_out = False
        self._window.clear()
        self._failures = 0
        if status is BreakerStatus.OPEN:
            self._opened_at = self._time()
        elif status is BreakerStatus.CLOSED:
            self._opened_at = None

    # --- persisted ------------------------------------------------------------------------

    async def acquire(self) -> Permit | None:
        """Admit a call (``None`` when refused), persisting a transition to half-open."""
        permit, changed = self.try_acquire()
        if changed:
            await self._save()
        return permit

    async def record_success(self, permit: Permit) -> None:
        if self.on_success(permit):
            await self._save()

    async def record_failure(self, permit: Permit) -> None:
        if self.on_failure(permit):
            await self._save()

    async def record_ignored(self, permit: Permit) -> None:
        self.on_ignored(permit)

    async def guard(self, start: Callable[[], Awaitable[T]]) -> T:
        """Run one call to this breaker's backend under it: refused while open, its outcome
        counted as :func:`~dspex.resilience.classify.trips_breaker` says.

        This is how a plain backend (not in a coordinator group) gets its breaker; a group
        judges its members' attempts itself.

        Raises:
            CircuitOpenError: the circuit is open (the backend was not called).
            Exception: what the call raised, as it is.
        """
        permit, changed = self.try_acquire()
        if changed:
            await self._save()
        if permit is None:
            raise CircuitOpenError(
                f"backend {self.name!r}: circuit open after too many failures; not called "
                f"(a probe is let through {self.config.open_seconds:g}s after it opened)",
                self.name,
            )
        try:
            result = await start()
        except asyncio.CancelledError:
            self.on_ignored(permit)
            raise
        except Exception as exc:
            if trips_breaker(exc):
                await self.record_failure(permit)
            else:
                self.on_ignored(permit)
            raise
        if self.on_success(permit):
            await self._save()
        return result

    async def sync(self) -> None:
        """Adopt the stored state, if any (another process may have changed it)."""
        if self.store is None:
            return
        stored = await self.store.load(self.name)
        if stored is not None:
            self.adopt(stored)

    async def reset(self) -> None:
        """Close the breaker and forget its window (an operator's override)."""
        self._transition(BreakerStatus.CLOSED)
        await self._save()

    async def _save(self) -> None:
        if self.store is not None:
            await self.store.save(self.name, self.state)


class BreakerRegistry:
    """The breakers of every backend, created on first use, sharing one config and store.

    Breakers are keyed by backend name, so two coordinator groups that share a backend share
    its breaker.
    """

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        store: BreakerStateStore | None = None,
        wall_time: Callable[[], float] = time.time,
        overrides: dict[str, BreakerConfig] | None = None,
    ) -> None:
        self.config = config or BreakerConfig()
        self.store = store
        self._time = wall_time
        self._overrides = dict(overrides or {})
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, name: str) -> CircuitBreaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name,
                self._overrides.get(name, self.config),
                store=self.store,
                wall_time=self._time,
            )
            self._breakers[name] = breaker
        return breaker

    def states(self) -> dict[str, BreakerState]:
        """Every known breaker's state, by backend name."""
        return {name: b.state for name, b in sorted(self._breakers.items())}

    async def sync(self) -> None:
        """Adopt the stored state of every known breaker."""
        for breaker in list(self._breakers.values()):
            await breaker.sync()

"""Retry policy and the clock it waits on.

:class:`RetryPolicy` holds the parameters (names as in LangGraph/Temporal) and computes waits;
the coordinator runs its one retry loop with tenacity on top of it, passing every tenacity
parameter explicitly (none of tenacity's defaults is relied on).

Waits: before round ``n + 1`` the coordinator waits
``min(max_interval, initial_interval * backoff_factor ** (n - 1))``, reduced by a random share of
up to ``jitter`` of itself (so concurrent callers spread out without ever exceeding
``max_interval``). A provider's ``Retry-After`` is a floor: it is honoured even above
``max_interval`` — the provider knows when it will take calls again — but never above
``max_retry_after`` (60 s by default), so a hostile or buggy header cannot park a call for hours.

:class:`Clock` is what the coordinator reads time from and sleeps on. :class:`LoopClock` (the
default) uses the running event loop, so fake-time tests (looptime) spend no real time; tests
may also inject their own.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from dspex.errors import ConfigError

__all__ = ["Clock", "LoopClock", "RetryPolicy"]


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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a call is retried, across all backends of a group.

    Attributes:
        max_attempts: backend attempts in all, including the first (1 = no retry).
        initial_interval: seconds before the first retry round.
        backoff_factor: multiplier per round (>= 1).
        max_interval: cap on one backoff wait, in seconds.
        jitter: fraction in [0, 1] of each wait removed at random.
        deadline: seconds all attempts, waits and failovers together may take, or ``None``.
        max_retry_after: the longest ``Retry-After`` honoured, in seconds.

    Raises:
        ConfigError: a parameter is out of range.

    Example:
        >>> RetryPolicy(max_attempts=4, initial_interval=0.2, deadline=10).delay(2)
        0.4
    """

    max_attempts: int = 3
    initial_interval: float = 0.5
    backoff_factor: float = 2.0
    max_interval: float = 30.0
    jitter: float = 0.2
    deadline: float | None = None
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            problems.append(f"max_attempts must be an integer, got {self.max_attempts!r}")
        elif self.max_attempts < 1:
            problems.append(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("initial_interval", "max_interval", "max_retry_after"):
            value = getattr(self, name)
            if not _finite(value) or value < 0:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        if not _finite(self.backoff_factor) or self.backoff_factor < 1:
            problems.append(f"backoff_factor must be >= 1, got {self.backoff_factor!r}")
        if not _finite(self.jitter) or not 0.0 <= self.jitter <= 1.0:
            problems.append(f"jitter must be a fraction in [0, 1], got {self.jitter!r}")
        if self.deadline is not None and (not _finite(self.deadline) or self.deadline <= 0):
            problems.append(f"deadline must be a positive number of seconds, got {self.deadline!r}")
        if problems:
            raise ConfigError("invalid retry policy: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | Any) -> RetryPolicy:
        """Build from a mapping (a ``[coordinators.X.retry]`` table) or any object with the same
        attribute names (such as the engine's ``RetrySpec``); missing names keep their defaults.

        Raises:
            ConfigError: an unknown key or a value out of range.
        """
        names = [f.name for f in fields(cls)]
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(names))
            if unknown:
                raise ConfigError(f"unknown retry policy key(s): {', '.join(unknown)}")
            values = dict(data)
        else:
            values = {n: getattr(data, n) for n in names if hasattr(data, n)}
        return cls(**values)

    def backoff(self, round_number: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry round ``round_number`` (1 for the first retry round).

        Without ``rng`` the wait before jitter (the longest it can be) is returned.
        """
        exponent = max(round_number - 1, 0)
        try:
            base = self.initial_interval * self.backoff_factor**exponent
        except OverflowError:
            base = math.inf
        base = min(self.max_interval, base)
        if rng is None or not self.jitter:
            return base
        return base * (1.0 - self.jitter * rng.random())

    def delay(
        self,
        round_number: int,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """The backoff wait, never below a provider's ``retry_after`` (capped at
        ``max_retry_after``)."""
        wait = self.backoff(round_number, rng)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

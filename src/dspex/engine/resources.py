"""The resource manager: named capacities, FIFO admission and measured utilization.

A module declares what it needs (``{"lm_slots": 1, "memory_mb": 512}``); the manager admits it when
all of that is free and keeps it waiting otherwise. Admission is strictly first come, first served:
a large request at the head of the queue blocks the small ones behind it, so it is never starved.
``max_bypass`` relaxes this to bounded overtaking (the :class:`~dspex.Engine` builds its manager
with ``max_bypass=4``): a few later requests may pass a blocked head, never more than that many.
A need larger than the capacity can never be admitted; :meth:`ResourceManager.check` reports it at
validation time and :meth:`ResourceManager.acquire` refuses it rather than waiting forever.

Time is read from the running event loop's clock, so tests under ``looptime`` measure virtual time.

Example:
    >>> manager = ResourceManager({"lm_slots": 2})
    >>> async def call() -> None:
    ...     async with manager.acquire({"lm_slots": 1}):
    ...         ...
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Mapping
from types import TracebackType

from dspex.errors import ErrorDetail, ResourceError

__all__ = ["ResourceManager"]

# Float needs (0.1 + 0.2 …) leave rounding dust in the running totals; this much is not a breach.
_EPSILON = 1e-9


_LOOKAHEAD = 16  # how far behind the head a bypass looks (keeps a release O(1)-ish)


class _Waiter:
    __slots__ = ("bypassed", "future", "needs")

    def __init__(self, needs: dict[str, float], future: asyncio.Future[None]) -> None:
        self.needs = needs
        self.future = future
        self.bypassed = 0


class ResourceManager:
    """Named capacities shared by concurrently running modules.

    Args:
        capacities: how much of each resource exists (``cpu``, ``memory_mb``, ``lm_slots`` or any
            custom key). Capacities are non-negative numbers.
        max_bypass: how many later requests may be admitted ahead of a blocked head of the queue
            while it waits. ``0`` (the default) is strict FIFO. A small bound (say 4) lets small
            requests fill capacity the head cannot use yet, raising utilization, and still never
            starves the head: once bypassed that often, it blocks everyone behind it again.

    Raises:
        ResourceError: a capacity is negative or not a finite number, or ``max_bypass`` < 0.
    """

    def __init__(self, capacities: Mapping[str, float], *, max_bypass: int = 0) -> None:
        bad = [k for k, v in capacities.items() if not math.isfinite(v) or v < 0]
        if bad:
            raise ResourceError(f"capacities must be finite and non-negative: {sorted(bad)}")
        if max_bypass < 0:
            raise ResourceError(f"max_bypass must be >= 0, got {max_bypass}")
        self.max_bypass = max_bypass
        self._capacity: dict[str, float] = {k: float(v) for k, v in capacities.items()}
        self._in_use: dict[str, float] = dict.fromkeys(self._capacity, 0.0)
        self._peak: dict[str, float] = dict.fromkeys(self._capacity, 0.0)
        self._area: dict[str, float] = dict.fromkeys(self._capacity, 0.0)
        self._waiters: deque[_Waiter] = deque()
        self._start: float | None = None
        self._last: float = 0.0
        self._touch()

    # ------------------------------------------------------------------ inspection

    @property
    def capacities(self) -> dict[str, float]:
        """A copy of the capacities."""
        return dict(self._capacity)

    @property
    def waiting(self) -> int:
        """How many acquisitions are queued, waiting for resources."""
        return len(self._waiters)

    def in_use(self) -> dict[str, float]:
        """How much of each resource is held right now."""
        return dict(self._in_use)

    def peak(self) -> dict[str, float]:
        """The most of each resource held at once since creation or :meth:`reset`."""
        return dict(self._peak)

    def utilization(self) -> dict[str, float]:
        """Time-weighted average share of each capacity in use since creation or :meth:`reset`.

        Returns:
            A value in [0, 1] per resource; 0.0 when no time has passed or the capacity is 0.
        """
        now = self._touch()
        elapsed = now - (self._start if self._start is not None else now)
        out: dict[str, float] = {}
        for key, capacity in self._capacity.items():
            out[key] = self._area[key] / (capacity * elapsed) if capacity and elapsed > 0 else 0.0
        return out

    def reset(self) -> None:
        """Restart the utilization and peak measurements (what is held now stays held)."""
        self._start = None
        self._touch()
        self._area = dict.fromkeys(self._capacity, 0.0)
        self._peak = dict(self._in_use)

    def check(self, needs: Mapping[str, float]) -> list[ErrorDetail]:
        """Every reason ``needs`` can never be admitted (empty when it can).

        A need for an unknown resource, a negative or non-finite need, and a need above the
        capacity are each one problem, with the resource name as the field.
        """
        problems: list[ErrorDetail] = []
        for key, need in needs.items():
            capacity = self._capacity.get(key)
            if capacity is None:
                known = ", ".join(sorted(self._capacity)) or "none"
                problems.append(
                    ErrorDetail(
                        key, "unknown_resource", f"unknown resource {key!r} (known: {known})"
                    )
                )
            elif not math.isfinite(need) or need < 0:
                problems.append(ErrorDetail(key, "invalid_need", f"need {need!r} is not >= 0"))
            elif need > capacity + _EPSILON:
                problems.append(
                    ErrorDetail(
                        key, "exceeds_capacity", f"needs {need:g}, capacity is {capacity:g}"
                    )
                )
        return problems

    # ------------------------------------------------------------------ admission

    def acquire(self, needs: Mapping[str, float]) -> _Acquisition:
        """An async context manager that holds ``needs`` for the duration of its block.

        Waits (FIFO) until everything is free; releases on every exit path, including
        cancellation while waiting or while holding. Empty needs pass straight through.

        Raises:
            ResourceError: ``needs`` can never be admitted (see :meth:`check`).
        """
        problems = self.check(needs)
        if problems:
            detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
            raise ResourceError(f"resource needs cannot be admitted: {detail}")
        return _Acquisition(self, {k: float(v) for k, v in needs.items() if v > 0})

    async def _acquire(self, needs: dict[str, float]) -> None:
        if self._fits(needs):
            if not self._waiters:
                self._take(needs)
                return
            head = self._waiters[0]
            if head.bypassed < self.max_bypass and not head.future.done():
                head.bypassed += 1
                self._take(needs)
                return
        waiter = _Waiter(needs, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted, then cancelled before this task resumed: give the grant back.
                self._release(needs)
            else:
                if waiter in self._waiters:  # a release may already have dropped it
                    self._waiters.remove(waiter)
                # The head may have been what blocked the others.
                self._grant_waiters()
            raise

    def _fits(self, needs: dict[str, float]) -> bool:
        in_use, capacity = self._in_use, self._capacity
        return all(in_use[k] + v <= capacity[k] + _EPSILON for k, v in needs.items())

    def _take(self, needs: dict[str, float]) -> None:
        self._touch()
        in_use, peak = self._in_use, self._peak
        for key, need in needs.items():
            held = in_use[key] + need
            in_use[key] = held
            if held > peak[key]:
                peak[key] = held

    def _release(self, needs: dict[str, float]) -> None:
        self._touch()
        in_use = self._in_use
        for key, need in needs.items():
            left = in_use[key] - need
            in_use[key] = left if left > _EPSILON else 0.0
        self._grant_waiters()

    def _grant_waiters(self) -> None:
        waiters = self._waiters
        while waiters:
            head = waiters[0]
            if head.future.done():  # cancelled; its task removes nothing else, so drop it here
                waiters.popleft()
                continue
            if not self._fits(head.needs):
                if head.bypassed < self.max_bypass:
                    self._bypass(head)
                return  # nobody else passes the head
            waiters.popleft()
            self._take(head.needs)
            head.future.set_result(None)

    def _bypass(self, head: _Waiter) -> None:
        """Admit waiters behind a blocked head that fit now, up to its bypass allowance."""
        waiters = self._waiters
        index = 1
        while index < min(len(waiters), _LOOKAHEAD) and head.bypassed < self.max_bypass:
            waiter = waiters[index]
            if not waiter.future.done() and self._fits(waiter.needs):
                del waiters[index]
                head.bypassed += 1
                self._take(waiter.needs)
                waiter.future.set_result(None)
            else:
                index += 1

    def _touch(self) -> float:
        """Advance the utilization integral to now and return now (loop time)."""
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # outside a loop (construction in sync code): start on first use
            return self._last
        if self._start is None:
            self._start = now
            self._last = now
            return now
        elapsed = now - self._last
        if elapsed > 0:
            area, capacity = self._area, self._capacity
            for key, held in self._in_use.items():
                if held and capacity[key]:
                    area[key] += held * elapsed
            self._last = now
        return now


class _Acquisition:
    """The context manager returned by :meth:`ResourceManager.acquire`."""

    __slots__ = ("_entered", "_manager", "_needs")

    def __init__(self, manager: ResourceManager, needs: dict[str, float]) -> None:
        self._manager = manager
        self._needs = needs
        self._entered = False

    async def __aenter__(self) -> None:
        if self._needs:
            await self._manager._acquire(self._needs)
            self._entered = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._entered:
            self._entered = False
            self._manager._release(self._needs)

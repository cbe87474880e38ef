"""A fake clock for the store tests, and pending batch items made with it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex.store import Store


class FakeClock:
    """A clock that only moves when told to, plus one microsecond per reading.

    The tick keeps timestamps distinct (and so orderings deterministic) without real time.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def pending_items(
    store: Store,
    clock: FakeClock,
    batch_id: str,
    items: Sequence[tuple[int, Mapping[str, Any]]],
    *,
    program: str = "qa",
    version: int = 1,
) -> None:
    """Batch items left ``pending`` the way a worker that died leaves them: created running
    under a one-second lease, the clock moved past it, put back by the reaper (their first
    attempt counted)."""
    claimed = await store.add_and_claim_batch_items(
        batch_id, program, version, items, worker_id="died", lease_seconds=1.0
    )
    clock.advance(2)
    reaped = await store.reap_expired_leases(limit=len(claimed) + 1)
    assert sorted(reaped.requeued) == sorted(eid for eid, _ in claimed.values())

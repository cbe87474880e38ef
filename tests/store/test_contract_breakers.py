"""The BreakerStore contract: circuit-breaker states (every implementation)."""

from __future__ import annotations

from tests.store._clock import FakeClock

from dspex.records import BreakerRecord
from dspex.store import Store


async def test_breaker_state_is_saved_replaced_and_listed_by_backend(
    store: Store, clock: FakeClock
) -> None:
    opened = clock()
    await store.save_breaker(BreakerRecord("openai", "open", failure_count=5, opened_at=opened))
    await store.save_breaker(BreakerRecord("anthropic", "closed", success_count=3))
    await store.save_breaker(
        BreakerRecord("openai", "half_open", failure_count=5, opened_at=opened)
    )
    breakers = await store.list_breakers()
    assert [(b.backend, b.state) for b in breakers] == [
        ("anthropic", "closed"),
        ("openai", "half_open"),
    ]
    assert breakers[1].opened_at == opened
    assert breakers[1].updated_at is not None

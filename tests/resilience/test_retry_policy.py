"""RetryPolicy: validation and the waits it computes; the loop clock."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace

import pytest

from dspex.errors import ConfigError
from dspex.resilience import Clock, LoopClock, RetryPolicy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 1.5),
        ("max_attempts", True),
        ("initial_interval", -0.1),
        ("max_interval", float("inf")),
        ("max_retry_after", -1),
        ("backoff_factor", 0.5),
        ("jitter", 1.5),
        ("jitter", -0.1),
        ("deadline", 0),
        ("deadline", float("nan")),
    ],
)
def test_policy_rejects_out_of_range_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_policy_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        RetryPolicy(max_attempts=0, jitter=2.0)
    assert "max_attempts" in caught.value.message
    assert "jitter" in caught.value.message


def test_backoff_grows_exponentially_up_to_max_interval() -> None:
    policy = RetryPolicy(initial_interval=0.5, backoff_factor=2.0, max_interval=3.0, jitter=0.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_backoff_survives_huge_round_numbers() -> None:
    policy = RetryPolicy(initial_interval=1.0, backoff_factor=10.0, max_interval=7.0)
    assert policy.backoff(10_000) == 7.0


def test_jitter_only_shortens_the_wait_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(initial_interval=2.0, backoff_factor=1.0, jitter=0.25)
    rng = random.Random(1)
    waits = [policy.backoff(1, rng) for _ in range(500)]
    assert all(1.5 <= w <= 2.0 for w in waits)
    assert max(waits) - min(waits) > 0.4  # actually spread, not constant


def test_delay_never_goes_below_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.1, max_interval=1.0, jitter=0.0)
    assert policy.delay(1, retry_after=4.0) == 4.0


def test_delay_caps_retry_after_at_max_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.1, max_retry_after=60.0)
    assert policy.delay(1, retry_after=3600.0) == 60.0


def test_delay_ignores_missing_or_zero_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.3, jitter=0.0)
    assert policy.delay(1, None) == policy.delay(1, 0.0) == 0.3


def test_from_mapping_keeps_defaults_for_missing_keys() -> None:
    policy = RetryPolicy.from_mapping({"max_attempts": 5, "deadline": 12})
    assert policy == RetryPolicy(max_attempts=5, deadline=12)


def test_from_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="retries"):
        RetryPolicy.from_mapping({"retries": 3})


def test_from_mapping_reads_an_object_with_the_same_attribute_names() -> None:
    spec = SimpleNamespace(max_attempts=2, initial_interval=0.0, jitter=0.5, other="x")
    assert RetryPolicy.from_mapping(spec) == RetryPolicy(
        max_attempts=2, initial_interval=0.0, jitter=0.5
    )


@pytest.mark.looptime
async def test_loop_clock_reads_and_sleeps_on_the_event_loop() -> None:
    clock = LoopClock()
    assert isinstance(clock, Clock)
    before = clock.now()
    await clock.sleep(42)
    assert clock.now() - before == pytest.approx(42)
    assert clock.now() == asyncio.get_running_loop().time()

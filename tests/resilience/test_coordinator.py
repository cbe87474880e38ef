"""The coordinator: one retry loop across a backend group, breakers, strategies and deadlines.

Fake time (looptime): every wait is asyncio time, so ``loop.time()`` says exactly how long the
call waited, and backoff tests take milliseconds.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.resilience.faults import (
    AUTH,
    BAD_REQUEST,
    CONNECTION,
    HANG,
    OK,
    PARSE,
    TIMEOUT,
    UNAVAILABLE,
    rate_limited,
    request,
    scripted,
)

from dspex.backends.base import Backend, BackendAttempt
from dspex.backends.mock import MockBackend
from dspex.errors import (
    AllBackendsFailedError,
    BadRequestError,
    ConfigError,
    DeadlineExceeded,
    MalformedResponseError,
    ParseError,
    is_retryable,
)
from dspex.resilience import (
    BreakerConfig,
    BreakerRegistry,
    BreakerStatus,
    Coordinator,
    MemoryBreakerStore,
    RetryPolicy,
)

pytestmark = pytest.mark.looptime

FAST = RetryPolicy(max_attempts=5, initial_interval=1.0, backoff_factor=2.0, jitter=0.0)


def _now() -> float:
    return asyncio.get_running_loop().time()


def _outcomes(attempts: tuple[BackendAttempt, ...] | list[BackendAttempt]) -> list[tuple[str, str]]:
    return [(a.backend, a.error_code or a.outcome) for a in attempts]


# --- the healthy path -------------------------------------------------------------------------


def test_coordinator_is_a_backend() -> None:
    assert isinstance(Coordinator("g", [scripted("a")]), Backend)


async def test_healthy_primary_answers_in_one_attempt() -> None:
    primary, secondary = scripted("primary"), scripted("secondary")
    result = await Coordinator("g", [primary, secondary], policy=FAST).complete(request())
    assert result.outputs == {"answer": "primary answered"}
    assert _outcomes(result.attempts) == [("primary", "succeeded")]
    assert secondary.calls == 0


async def test_successful_attempt_records_usage_module_and_group() -> None:
    group = Coordinator("g", [scripted("primary")])
    result = await group.complete(request(module="answerer"))
    [attempt] = result.attempts
    assert attempt.usage == result.usage
    assert attempt.prompt_tokens > 0
    assert attempt.completion_tokens > 0
    assert (attempt.module, attempt.group, attempt.attempt) == ("answerer", "g", 1)
    assert attempt.ended_at >= attempt.started_at


# --- retries and failover ---------------------------------------------------------------------


async def test_primary_failure_fails_over_to_secondary_without_waiting() -> None:
    primary, secondary = scripted("primary", UNAVAILABLE), scripted("secondary")
    result = await Coordinator("g", [primary, secondary], policy=FAST).complete(request())
    assert _outcomes(result.attempts) == [
        ("primary", "backend_unavailable"),
        ("secondary", "succeeded"),
    ]
    assert result.attempts[0].status == 503
    assert _now() == 0


async def test_single_backend_is_retried_with_exponential_backoff() -> None:
    backend = scripted("only", UNAVAILABLE, CONNECTION, TIMEOUT)
    result = await Coordinator("g", [backend], policy=FAST).complete(request())
    assert backend.calls == 4
    assert len(result.attempts) == 4
    assert _now() == pytest.approx(1.0 + 2.0 + 4.0)


async def test_backoff_happens_between_rounds_not_between_backends() -> None:
    a, b = scripted("a", UNAVAILABLE), scripted("b", UNAVAILABLE)
    result = await Coordinator("g", [a, b], policy=FAST).complete(request())
    assert _outcomes(result.attempts) == [
        ("a", "backend_unavailable"),
        ("b", "backend_unavailable"),
        ("a", "succeeded"),
    ]
    assert _now() == pytest.approx(1.0)


async def test_rate_limit_retry_after_is_honoured() -> None:
    backend = scripted("only", rate_limited(retry_after=5))
    result = await Coordinator("g", [backend], policy=FAST).complete(request())
    assert result.attempts[0].retry_after == 5
    assert _now() == pytest.approx(5.0)


async def test_retry_after_above_max_interval_is_still_honoured() -> None:
    policy = RetryPolicy(initial_interval=0.1, max_interval=1.0, jitter=0.0)
    await Coordinator("g", [scripted("only", rate_limited(4))], policy=policy).complete(request())
    assert _now() == pytest.approx(4.0)


async def test_retry_after_is_capped_at_max_retry_after() -> None:
    policy = RetryPolicy(initial_interval=0.1, max_retry_after=7.0, jitter=0.0)
    await Coordinator("g", [scripted("only", rate_limited(3600))], policy=policy).complete(
        request()
    )
    assert _now() == pytest.approx(7.0)


async def test_rate_limited_primary_is_not_asked_again_before_its_retry_after() -> None:
    a, b = scripted("a", rate_limited(10)), scripted("b", UNAVAILABLE)
    result = await Coordinator("g", [a, b], policy=FAST).complete(request())
    assert [x.backend for x in result.attempts] == ["a", "b", "a"]
    assert _now() == pytest.approx(10.0)


async def test_secondary_retry_after_is_honoured_within_a_round() -> None:
    a = scripted("a", UNAVAILABLE, UNAVAILABLE)
    b = scripted("b", rate_limited(6))
    result = await Coordinator("g", [a, b], policy=FAST).complete(request())
    assert [x.backend for x in result.attempts] == ["a", "b", "a", "b"]
    assert _now() == pytest.approx(6.0)  # 1 s backoff, then b waited out its Retry-After


async def test_auth_error_is_never_retried_on_the_same_backend() -> None:
    a, b = scripted("a", AUTH), scripted("b", UNAVAILABLE, UNAVAILABLE)
    result = await Coordinator("g", [a, b], policy=FAST).complete(request())
    assert _outcomes(result.attempts) == [
        ("a", "backend_auth"),
        ("b", "backend_unavailable"),
        ("b", "backend_unavailable"),
        ("b", "succeeded"),
    ]
    assert a.calls == 1


async def test_auth_error_on_the_only_backend_fails_at_once() -> None:
    backend = scripted("only", AUTH)
    with pytest.raises(AllBackendsFailedError) as caught:
        await Coordinator("g", [backend], policy=FAST).complete(request())
    assert backend.calls == 1
    assert [(a.backend, a.code) for a in caught.value.attempts] == [("only", "backend_auth")]
    assert _now() == 0


async def test_bad_request_is_raised_as_is_without_retry_or_failover() -> None:
    a, b = scripted("a", BAD_REQUEST), scripted("b")
    attempts: list[BackendAttempt] = []
    group = Coordinator("g", [a, b], policy=FAST, on_attempt=attempts.append)
    with pytest.raises(BadRequestError):
        await group.complete(request())
    assert (a.calls, b.calls) == (1, 0)
    assert _outcomes(attempts) == [("a", "backend_bad_request")]


async def test_parse_error_counts_once_and_does_not_trip_the_breaker() -> None:
    registry = BreakerRegistry(BreakerConfig(minimum_calls=1, window_size=1))
    backend = scripted("only", PARSE)
    group = Coordinator("g", [backend], policy=FAST, breakers=registry)
    with pytest.raises(ParseError):
        await group.complete(request())
    assert backend.calls == 1
    assert registry.get("only").status is BreakerStatus.CLOSED


async def test_attempts_are_capped_by_max_attempts_across_the_group() -> None:
    a = scripted("a", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    b = scripted("b", UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    policy = RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=0.0)
    with pytest.raises(AllBackendsFailedError) as caught:
        await Coordinator("g", [a, b], policy=policy).complete(request())
    assert [(x.backend, x.code) for x in caught.value.attempts] == [
        ("a", "backend_unavailable"),
        ("b", "backend_unavailable"),
        ("a", "backend_unavailable"),
    ]
    assert isinstance(caught.value.__cause__, Exception)
    assert "every backend failed after 3 attempt(s)" in caught.value.message


async def test_a_group_that_failed_on_transient_errors_alone_is_retryable() -> None:
    a = scripted("a", rate_limited(1.0), TIMEOUT)
    b = scripted("b", UNAVAILABLE, CONNECTION)
    policy = RetryPolicy(max_attempts=4, initial_interval=1.0, jitter=0.0)
    with pytest.raises(AllBackendsFailedError) as caught:
        await Coordinator("g", [a, b], policy=policy).complete(request())
    assert [x.retryable for x in caught.value.attempts] == [True] * 4
    assert is_retryable(caught.value)


async def test_a_group_that_met_an_auth_error_is_not_retryable() -> None:
    a = scripted("a", AUTH)
    b = scripted("b", UNAVAILABLE, UNAVAILABLE)
    policy = RetryPolicy(max_attempts=3, initial_interval=1.0, jitter=0.0)
    with pytest.raises(AllBackendsFailedError) as caught:
        await Coordinator("g", [a, b], policy=policy).complete(request())
    assert [(x.code, x.retryable) for x in caught.value.attempts] == [
        ("backend_auth", False),
        ("backend_unavailable", True),
        ("backend_unavailable", True),
    ]
    assert not is_retryable(caught.value)


async def test_a_malformed_reply_fails_over_like_a_server_error() -> None:
    broken = MockBackend("broken", handler=_malformed)
    result = await Coordinator("g", [broken, scripted("b")], policy=FAST).complete(request())
    assert _outcomes(result.attempts) == [
        ("broken", "backend_malformed_response"),
        ("b", "succeeded"),
    ]
    assert _now() == 0


async def _malformed(req: object) -> dict[str, str]:
    raise MalformedResponseError("the reply is not JSON", status=200, backend="broken")


async def test_backend_timeout_fails_over() -> None:
    slow = scripted("slow", HANG)
    result = await Coordinator("g", [slow, scripted("b")], policy=FAST).complete(
        request(timeout=2.0)
    )
    assert _outcomes(result.attempts) == [("slow", "timeout"), ("b", "succeeded")]
    assert _now() == pytest.approx(2.0)


async def test_jitter_spreads_the_wait_below_the_backoff() -> None:
    policy = RetryPolicy(initial_interval=10.0, jitter=0.5)
    await Coordinator("g", [scripted("only", UNAVAILABLE)], policy=policy).complete(request())
    assert 5.0 <= _now() <= 10.0


# --- deadline ---------------------------------------------------------------------------------


async def test_deadline_cuts_a_hanging_attempt_and_names_what_was_tried() -> None:
    a, b = scripted("a", UNAVAILABLE), scripted("b", HANG)
    policy = RetryPolicy(max_attempts=5, initial_interval=1.0, deadline=8.0)
    with pytest.raises(DeadlineExceeded) as caught:
        await Coordinator("g", [a, b], policy=policy).complete(request())
    assert _now() == pytest.approx(8.0)
    assert [(x.backend, x.code) for x in caught.value.attempts] == [
        ("a", "backend_unavailable"),
        ("b", "deadline_exceeded"),
    ]


async def test_a_wait_past_the_deadline_is_not_started() -> None:
    policy = RetryPolicy(initial_interval=1.0, deadline=10.0)
    with pytest.raises(DeadlineExceeded) as caught:
        await Coordinator("g", [scripted("only", rate_limited(30))], policy=policy).complete(
            request()
        )
    assert _now() == 0
    assert [x.code for x in caught.value.attempts] == ["rate_limited"]


async def test_deadline_spent_does_not_trip_the_breaker() -> None:
    registry = BreakerRegistry(BreakerConfig(minimum_calls=1, window_size=1))
    policy = RetryPolicy(deadline=1.0)
    with pytest.raises(DeadlineExceeded):
        await Coordinator("g", [scripted("only", HANG)], policy=policy, breakers=registry).complete(
            request()
        )
    assert registry.get("only").status is BreakerStatus.CLOSED


async def test_backend_own_timeout_inside_the_deadline_is_retried() -> None:
    policy = RetryPolicy(initial_interval=0.0, deadline=100.0)
    result = await Coordinator("g", [scripted("only", HANG)], policy=policy).complete(
        request(timeout=3.0)
    )
    assert _outcomes(result.attempts) == [("only", "timeout"), ("only", "succeeded")]


# --- breakers ---------------------------------------------------------------------------------


def _tripping_registry(store: MemoryBreakerStore | None = None) -> BreakerRegistry:
    return BreakerRegistry(
        BreakerConfig(minimum_calls=2, window_size=2, open_seconds=60), store=store
    )


async def test_open_primary_is_skipped_straight_to_secondary() -> None:
    registry = _tripping_registry()
    primary = scripted("primary", UNAVAILABLE, UNAVAILABLE)
    secondary = scripted("secondary")
    group = Coordinator("g", [primary, secondary], policy=FAST, breakers=registry)
    await group.complete(request())
    await group.complete(request())
    assert registry.get("primary").status is BreakerStatus.OPEN
    before = _now()
    result = await group.complete(request())
    assert _outcomes(result.attempts) == [("secondary", "succeeded")]
    assert primary.calls == 2
    assert _now() == before


async def test_every_circuit_open_fails_at_once_naming_each_backend() -> None:
    registry = _tripping_registry()
    a, b = scripted("a"), scripted("b")
    for name in ("a", "b"):
        breaker = registry.get(name)
        for _ in range(2):
            permit, _ = breaker.try_acquire()
            assert permit is not None
            breaker.on_failure(permit)
    with pytest.raises(AllBackendsFailedError) as caught:
        await Coordinator("g", [a, b], policy=FAST, breakers=registry).complete(request())
    assert [(x.backend, x.code) for x in caught.value.attempts] == [
        ("a", "circuit_open"),
        ("b", "circuit_open"),
    ]
    assert (a.calls, b.calls) == (0, 0)
    assert _now() == 0


async def test_breaker_opening_mid_call_ends_the_call_without_more_waiting() -> None:
    registry = BreakerRegistry(BreakerConfig(minimum_calls=1, window_size=1, open_seconds=60))
    backend = scripted("only", UNAVAILABLE)
    with pytest.raises(AllBackendsFailedError) as caught:
        await Coordinator("g", [backend], policy=FAST, breakers=registry).complete(request())
    assert backend.calls == 1
    assert _now() == 0
    assert [x.code for x in caught.value.attempts] == ["backend_unavailable"]


async def test_half_open_probe_success_closes_the_breaker_and_is_persisted() -> None:
    store = MemoryBreakerStore()
    wall = [1_000.0]
    registry = BreakerRegistry(
        BreakerConfig(minimum_calls=1, window_size=1, open_seconds=30),
        store=store,
        wall_time=lambda: wall[0],
    )
    group = Coordinator("g", [scripted("only", UNAVAILABLE)], policy=FAST, breakers=registry)
    with pytest.raises(AllBackendsFailedError):
        await group.complete(request())
    opened = await store.load("only")
    assert opened is not None
    assert opened.status is BreakerStatus.OPEN
    wall[0] += 30
    result = await group.complete(request())  # cooled down: this call is the probe
    assert _outcomes(result.attempts) == [("only", "succeeded")]
    stored = await store.load("only")
    assert stored is not None
    assert stored.status is BreakerStatus.CLOSED


async def test_cancelled_call_is_recorded_and_does_not_trip_the_breaker() -> None:
    registry = BreakerRegistry(BreakerConfig(minimum_calls=1, window_size=1))
    attempts: list[BackendAttempt] = []
    group = Coordinator(
        "g", [scripted("only", HANG)], policy=FAST, breakers=registry, on_attempt=attempts.append
    )
    task = asyncio.create_task(group.complete(request()))
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _outcomes(attempts) == [("only", "cancelled")]
    assert registry.get("only").state.calls == 0


# --- strategies -------------------------------------------------------------------------------


async def test_round_robin_rotates_the_first_backend() -> None:
    backends = [scripted(n) for n in ("a", "b", "c")]
    group = Coordinator("g", backends, strategy="round_robin")
    firsts = [(await group.complete(request())).attempts[0].backend for _ in range(4)]
    assert firsts == ["a", "b", "c", "a"]


async def test_round_robin_still_fails_over_in_rotated_order() -> None:
    group = Coordinator(
        "g", [scripted("a"), scripted("b", UNAVAILABLE)], strategy="round_robin", policy=FAST
    )
    await group.complete(request())
    result = await group.complete(request())
    assert [x.backend for x in result.attempts] == ["b", "a"]


async def test_least_latency_prefers_the_faster_backend_once_measured() -> None:
    slow, fast = scripted("slow", latency=0.5), scripted("fast", latency=0.1)
    group = Coordinator("g", [slow, fast], strategy="least_latency")
    first = await group.complete(request())
    second = await group.complete(request())  # fast has not been measured yet: it goes first
    third = await group.complete(request())
    assert [r.attempts[0].backend for r in (first, second, third)] == ["slow", "fast", "fast"]
    latencies = group.latencies()
    assert latencies["fast"] is not None
    assert latencies["slow"] is not None
    assert latencies["fast"] < latencies["slow"]


async def test_least_latency_measures_successful_attempts_in_ms() -> None:
    backend = scripted("only", latency=1.0)
    group = Coordinator("g", [backend], strategy="least_latency")
    await group.complete(request())
    assert group.latencies()["only"] == pytest.approx(1000.0)


# --- callbacks, health, lifecycle -------------------------------------------------------------


async def test_async_on_attempt_sees_every_attempt_in_order() -> None:
    seen: list[tuple[int, str, str]] = []

    async def record(info: BackendAttempt) -> None:
        await asyncio.sleep(0)
        seen.append((info.attempt, info.backend, info.outcome))

    group = Coordinator(
        "g", [scripted("a", UNAVAILABLE), scripted("b")], policy=FAST, on_attempt=record
    )
    result = await group.complete(request())
    assert seen == [(1, "a", "failed"), (2, "b", "succeeded")]
    assert [(x.attempt, x.backend, x.outcome) for x in result.attempts] == seen


async def test_health_is_healthy_when_every_member_is_closed() -> None:
    health = await Coordinator("g", [scripted("a"), scripted("b")]).health()
    assert health.status == "healthy"
    assert health.details["backends"]["a"]["breaker"]["state"] == "closed"
    assert health.details["strategy"] == "failover"


async def test_health_is_degraded_when_one_breaker_is_open() -> None:
    registry = _tripping_registry()
    group = Coordinator(
        "g", [scripted("a", UNAVAILABLE, UNAVAILABLE), scripted("b")], breakers=registry
    )
    await group.complete(request())
    await group.complete(request())
    health = await group.health()
    assert health.status == "degraded"
    assert health.details["backends"]["a"]["breaker"]["state"] == "open"
    assert "a: healthy, breaker open" in health.reason


async def test_health_is_unhealthy_when_no_member_can_take_calls() -> None:
    backend = scripted("a")
    await backend.aclose()
    health = await Coordinator("g", [backend]).health()
    assert health.status == "unhealthy"


async def test_health_shows_state_another_process_stored() -> None:
    from dspex.resilience import BreakerState

    store = MemoryBreakerStore()
    await store.save("a", BreakerState(BreakerStatus.OPEN, opened_at=4_000_000_000.0))
    group = Coordinator("g", [scripted("a"), scripted("b")], breakers=BreakerRegistry(store=store))
    health = await group.health()
    assert health.details["backends"]["a"]["breaker"]["state"] == "open"


async def test_aclose_closes_members_only_when_it_owns_them() -> None:
    owned, shared = scripted("owned"), scripted("shared")
    await Coordinator("g", [owned]).aclose()
    await Coordinator("h", [shared], owns_backends=False).aclose()
    assert owned.closed
    assert not shared.closed


@pytest.mark.parametrize(
    ("backends", "strategy", "match"),
    [
        ([], "failover", "at least one backend"),
        (["a", "a"], "failover", "duplicate"),
        (["a"], "fastest", "unknown strategy"),
    ],
)
def test_coordinator_rejects_bad_groups(backends: list[str], strategy: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Coordinator("g", [scripted(n) for n in backends], strategy=strategy)  # type: ignore[arg-type]


async def test_ok_fault_is_a_plain_answer() -> None:
    result = await Coordinator("g", [scripted("a", OK)]).complete(request())
    assert result.outputs == {"answer": "a answered"}

"""The real DSPy path: ``dspy.LM`` over HTTP to the loopback server, coordinated.

The servers answer 429/500/401 on command; every provider request must be exactly one recorded
attempt (DSPy's own retries are off), and usage is counted once, from the answering call.
Backoff waits go to a clock that advances without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tests.support.openai_server import OpenAIServer, drop, status

from dspex.backends.base import BackendAttempt, PredictRequest
from dspex.backends.dspy_backend import DspyBackend
from dspex.errors import AllBackendsFailedError
from dspex.resilience import Coordinator, RetryPolicy
from dspex.signatures.signature import Signature

KEY_ENV = "DSPEX_TEST_RESILIENCE_KEY"
QA = Signature.parse("question: str -> answer: str")
POLICY = RetryPolicy(max_attempts=5, initial_interval=0.5, jitter=0.0)


class SkippingClock:
    """Loop time plus every wait requested, without waiting for real."""

    def __init__(self) -> None:
        self.waited: list[float] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time() + sum(self.waited)

    async def sleep(self, seconds: float) -> None:
        self.waited.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as primary, OpenAIServer() as secondary:
        yield primary, secondary


def _backend(name: str, server: OpenAIServer) -> DspyBackend:
    return DspyBackend(
        name, model="openai/loopback-model", api_base=server.base_url, api_key_env=KEY_ENV
    )


def _request() -> PredictRequest:
    return PredictRequest(signature=QA, inputs={"question": "What is 6 * 7?"}, module="qa")


async def test_rate_limit_then_server_error_are_retried_on_the_real_path(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    primary, _ = servers
    primary.script(status(429, retry_after=2), status(500))
    clock = SkippingClock()
    seen: list[BackendAttempt] = []
    group = Coordinator(
        "g", [_backend("primary", primary)], policy=POLICY, clock=clock, on_attempt=seen.append
    )
    try:
        result = await group.complete(_request())
    finally:
        await group.aclose()
    assert [(a.error_code or a.outcome, a.status) for a in result.attempts] == [
        ("rate_limited", 429),
        ("backend_unavailable", 500),
        ("succeeded", None),
    ]
    assert primary.request_count == len(result.attempts) == len(seen)
    assert result.attempts[0].retry_after == 2.0
    # Retry-After (counted from when it was received), then the second backoff round
    assert clock.waited == pytest.approx([2.0, 1.0], abs=0.05)


async def test_auth_failure_fails_over_and_provider_calls_equal_attempts(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    primary, secondary = servers
    primary.script(status(401))
    secondary.script(status(500), drop())
    group = Coordinator(
        "g",
        [_backend("primary", primary), _backend("secondary", secondary)],
        policy=POLICY,
        clock=SkippingClock(),
    )
    try:
        result = await group.complete(_request())
    finally:
        await group.aclose()
    assert [(a.backend, a.error_code or a.outcome) for a in result.attempts] == [
        ("primary", "backend_auth"),
        ("secondary", "backend_unavailable"),
        ("secondary", "backend_connection"),
        ("secondary", "succeeded"),
    ]
    assert primary.request_count + secondary.request_count == len(result.attempts)
    assert primary.request_count == 1


async def test_usage_is_counted_once_from_the_answering_call(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    primary, secondary = servers
    primary.script(status(503))
    group = Coordinator(
        "g",
        [_backend("primary", primary), _backend("secondary", secondary)],
        policy=POLICY,
        clock=SkippingClock(),
    )
    try:
        result = await group.complete(_request())
    finally:
        await group.aclose()
    failed, answered = result.attempts
    assert failed.usage == {}
    assert answered.usage == result.usage
    assert sum(u.total_tokens for u in result.usage.values()) > 0


async def test_exhausted_retries_on_the_real_path_name_every_failure(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    primary, _ = servers
    primary.script(status(500), status(502), status(503))
    group = Coordinator(
        "g",
        [_backend("primary", primary)],
        policy=RetryPolicy(max_attempts=3, initial_interval=0.1),
        clock=SkippingClock(),
    )
    try:
        with pytest.raises(AllBackendsFailedError) as caught:
            await group.complete(_request())
    finally:
        await group.aclose()
    assert [a.code for a in caught.value.attempts] == ["backend_unavailable"] * 3
    assert primary.request_count == 3

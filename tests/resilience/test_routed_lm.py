"""Opaque ``dspy`` modules through a coordinator: ``Coordinator.call`` and the routed DSPy LM.

A real ``dspy.Module`` (``ChainOfThought`` inside) runs on :func:`routed_lm`; its LM calls go
over HTTP to loopback servers scripted to fail, so failover, attempt records and usage are those
of the real DSPy path. Waits go to a clock that advances without sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.exceptions import LMError
from tests.resilience.faults import UNAVAILABLE, request, scripted
from tests.resilience.test_coordinator_dspy import SkippingClock
from tests.support.openai_server import OpenAIServer, status

from dspex.backends.base import Backend, BackendAttempt, Usage
from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.dspy_lm import dspex_cause, has_lm, recording, routed_lm
from dspex.errors import AllBackendsFailedError, BadRequestError, ConfigError, DspexError
from dspex.resilience import Coordinator, RetryPolicy
from dspex.resilience.coordinator import attempts_of

KEY_ENV = "DSPEX_TEST_ROUTED_KEY"
POLICY = RetryPolicy(max_attempts=4, initial_interval=0.5, jitter=0.0)


class Answer(dspy.Module):
    """An opaque module: dspex only sees its LM calls."""

    def __init__(self) -> None:
        super().__init__()
        self.think = dspy.ChainOfThought("question -> answer")

    async def aforward(self, question: str) -> Any:
        return await self.think.acall(question=question)


class TwoCalls(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> answer")
        self.second = dspy.Predict("answer -> verdict")

    async def aforward(self, question: str) -> Any:
        answer = (await self.first.acall(question=question)).answer
        return await self.second.acall(answer=answer)


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as a, OpenAIServer() as b:
        yield a, b


def _backend(name: str, server: OpenAIServer) -> DspyBackend:
    return DspyBackend(
        name, model="openai/loopback-model", api_base=server.base_url, api_key_env=KEY_ENV
    )


def _group(*backends: Backend, clock: SkippingClock | None = None) -> Coordinator:
    return Coordinator("main", backends, policy=POLICY, clock=clock or SkippingClock())


async def _run(module: dspy.Module, group: Coordinator, **inputs: Any) -> Any:
    with dspy.context(lm=routed_lm(group), track_usage=True):
        return await module.acall(**inputs)


async def test_a_dspy_module_fails_over_to_the_secondary_on_an_auth_error(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, b = servers
    a.script(status(401))
    group = _group(_backend("a", a), _backend("b", b))
    with recording("answer") as attempts:
        prediction = await _run(Answer(), group, question="What is 6 * 7?")
    assert prediction.answer == "answer answer"
    assert [(x.backend, x.outcome, x.status, x.module) for x in attempts] == [
        ("a", "failed", 401, "answer"),
        ("b", "succeeded", None, "answer"),
    ]
    assert (a.request_count, b.request_count) == (1, 1)
    await group.aclose()


async def test_usage_is_counted_once_with_the_servers_tokens(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, b = servers
    a.script(status(500))
    group = _group(_backend("a", a), _backend("b", b))
    with recording() as attempts:
        prediction = await _run(Answer(), group, question="What is 6 * 7?")
    usage = prediction.get_lm_usage()
    assert list(usage) == ["dspex/main"]  # not also under the member LM's model
    answered = attempts[-1]
    assert (usage["dspex/main"]["prompt_tokens"], usage["dspex/main"]["completion_tokens"]) == (
        answered.prompt_tokens,
        answered.completion_tokens,
    )
    assert answered.prompt_tokens > 0
    await group.aclose()


async def test_attempts_number_on_across_a_modules_lm_calls(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, b = servers
    a.script(status(429, retry_after=1), status(503))
    group = _group(_backend("a", a), _backend("b", b))
    with recording("two") as attempts:
        await _run(TwoCalls(), group, question="q")
    assert [(x.attempt, x.backend, x.outcome) for x in attempts] == [
        (1, "a", "failed"),
        (2, "b", "succeeded"),
        (3, "a", "failed"),
        (4, "b", "succeeded"),
    ]
    await group.aclose()


async def test_when_every_backend_fails_the_module_raises_the_groups_error(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, b = servers
    a.script(*[status(503)] * 4)
    b.script(status(401))
    group = _group(_backend("a", a), _backend("b", b))
    with pytest.raises(LMError) as caught:  # DSPy wraps what its engine raised
        await _run(Answer(), group, question="q")
    error = dspex_cause(caught.value)
    assert isinstance(error, AllBackendsFailedError)
    assert [x.backend for x in attempts_of(error)] == ["a", "b", "a", "a"]
    assert a.request_count + b.request_count == 4
    await group.aclose()


async def test_members_without_an_lm_are_skipped(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, _ = servers
    group = _group(scripted("mock"), _backend("a", a))
    with recording() as attempts:
        await _run(Answer(), group, question="q")
    assert [x.backend for x in attempts] == ["a"]
    await group.aclose()


def test_has_lm_does_not_build_the_lm() -> None:
    backend = DspyBackend("d", model="openai/x", api_key_env="DSPEX_TEST_UNSET_KEY")
    assert has_lm(backend)
    assert not has_lm(scripted("mock"))


async def test_a_module_calling_its_lm_synchronously_is_refused() -> None:
    group = _group(scripted("mock"))
    with dspy.context(lm=routed_lm(group)), pytest.raises(Exception, match="async LM calls only"):
        dspy.Predict("question -> answer")(question="q")


async def test_call_runs_any_operation_with_the_groups_retries() -> None:
    group = _group(scripted("a", UNAVAILABLE), scripted("b"))
    seen: list[BackendAttempt] = []

    async def op(backend: Backend) -> str:
        result = await backend.complete(request())
        return str(result.outputs["answer"])

    answer = await group.call(op, module="m", usage=lambda _: {"x": Usage(2, 3)}, attempts=seen)
    assert answer == "b answered"  # the secondary was asked at once
    assert [(x.backend, x.outcome) for x in seen] == [("a", "failed"), ("b", "succeeded")]
    assert seen[-1].usage == {"x": Usage(2, 3)}


async def test_call_with_no_accepting_member_is_a_config_error() -> None:
    group = _group(scripted("a"))

    async def op(backend: Backend) -> None:
        raise AssertionError("never called")

    with pytest.raises(ConfigError, match="no backend can take this call"):
        await group.call(op, accepts=lambda _: False)


async def test_an_error_no_backend_can_fix_carries_its_attempts() -> None:
    group = _group(scripted("a"))

    async def op(backend: Backend) -> None:
        raise BadRequestError("bad", status=400, backend=backend.name)

    with pytest.raises(BadRequestError) as caught:
        await group.call(op)
    assert [(x.backend, x.status) for x in attempts_of(caught.value)] == [("a", 400)]


def test_dspex_cause_finds_the_dspex_error_behind_a_wrapper() -> None:
    inner = DspexError("inner")
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    assert dspex_cause(outer) is inner
    assert dspex_cause(ValueError("plain")) is None


async def test_streaming_is_not_routed() -> None:
    from dspex.backends.dspy_lm import RoutingEngine

    engine = RoutingEngine(_group(scripted("a")))
    with pytest.raises(Exception, match="does not stream"):
        engine.stream(None)
    await engine.aclose()
    await asyncio.sleep(0)


async def test_a_rate_limited_backend_in_a_group_limits_the_routed_lm_calls_too(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    from dspex.resilience.ratelimit import RateLimiter, _RateLimitedLMBackend

    a, _ = servers
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    limiter = RateLimiter(rpm=60, tpm=600_000, clock=lambda: 0.0, sleep=sleep)
    limited = _RateLimitedLMBackend(_backend("a", a), limiter)  # what rate_limited() makes
    group = _group(limited)
    await _run(TwoCalls(), group, question="What is 6 * 7?")
    assert a.request_count == 2
    assert limiter.calls == 2
    assert sleeps == pytest.approx([1.0])  # the second call waited for its turn
    # both answers' tokens were charged to the token bucket (10,000 a second, here full)
    assert limiter._tokens is not None
    assert limiter._tokens.level < 10_000 - 2

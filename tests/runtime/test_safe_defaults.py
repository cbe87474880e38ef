"""The safe defaults a runtime gives a module that calls a backend: a per-attempt timeout, three
attempts for retryable failures and the backend's circuit breaker; the program spec wins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.runtime._support import QA, make_runtime, ready

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.config import BreakerSettings, DefaultsSettings, Settings
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.errors import BackendUnavailableError, ConfigError
from dspex.resilience import RetryPolicy
from dspex.runtime import Runtime
from dspex.store import MemoryStore

NO_WAIT = RetryPolicy(initial_interval=0.0, jitter=0.0)


class Flaky:
    """Fails the first ``failures`` calls with a 503, then answers; may hang instead."""

    def __init__(self, failures: int = 0, hang: bool = False) -> None:
        self.failures = failures
        self.hang = hang
        self.calls = 0

    async def __call__(self, request: PredictRequest) -> dict[str, Any]:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.calls <= self.failures:
            raise BackendUnavailableError("down", status=503)
        return {"answer": "ok"}


def _spec(**module: Any) -> dict[str, Any]:
    answer = {**QA["modules"]["answer"], **module}
    return {**QA, "modules": {"answer": answer}}


async def _run(handler: Flaky, defaults: DefaultsSettings, **module: Any) -> Any:
    backend = MockBackend("default", handler=handler)
    async with make_runtime(MemoryStore(), {"default": backend}, defaults=defaults) as rt:
        await ready(rt, _spec(**module))
        return await rt.execute("qa", {"question": "q"})


async def test_a_retryable_failure_is_retried_up_to_three_attempts_by_default() -> None:
    handler = Flaky(failures=2)
    result = await _run(handler, DefaultsSettings(retry=NO_WAIT))
    assert result.status == "completed"
    assert (result.steps[0].attempts, handler.calls) == (3, 3)


async def test_three_failed_attempts_fail_the_module() -> None:
    handler = Flaky(failures=5)
    result = await _run(handler, DefaultsSettings(retry=NO_WAIT))
    assert result.status == "failed"
    assert (result.steps[0].error_code, result.steps[0].attempts) == ("backend_unavailable", 3)


async def test_a_modules_own_retry_wins_over_the_default() -> None:
    handler = Flaky(failures=2)
    result = await _run(handler, DefaultsSettings(retry=NO_WAIT), retry=1)
    assert result.status == "failed"
    assert handler.calls == 1


async def test_the_default_timeout_cuts_each_attempt_short() -> None:
    handler = Flaky(hang=True)
    defaults = DefaultsSettings(timeout=0.05, retry=NO_WAIT.model_copy(update={"max_attempts": 2}))
    result = await _run(handler, defaults)
    step = result.steps[0]
    assert (step.error_code, step.attempts, handler.calls) == ("timeout", 2, 2)


async def test_a_modules_own_timeout_wins_over_the_default() -> None:
    handler = Flaky(hang=True)
    one = NO_WAIT.model_copy(update={"max_attempts": 1})
    result = await _run(handler, DefaultsSettings(timeout=3600, retry=one), timeout=0.05)
    assert result.steps[0].error_code == "timeout"


async def slow_echo(text: str) -> dict[str, str]:
    """A python module slower than the default timeout given below."""
    await asyncio.sleep(0.05)
    return {"echo": text}


async def test_a_python_module_gets_neither_the_default_retry_nor_timeout() -> None:
    program = Program.from_dict(
        {
            "name": "code",
            "signature": "text: str -> echo: str",
            "modules": {
                "echo": {
                    "kind": "python",
                    "signature": "text: str -> echo: str",
                    "function": "tests.runtime.test_safe_defaults:slow_echo",
                }
            },
        }
    )
    engine = Engine(retry={"max_attempts": 3}, timeout=0.01, allowed_imports=["tests.runtime"])
    result = await engine.run(program, {"text": "hi"})
    assert result.status == "completed"
    assert result.steps[0].attempts == 1


def test_an_engine_refuses_a_timeout_that_is_not_positive() -> None:
    with pytest.raises(ConfigError, match="timeout"):
        Engine(timeout=0)


async def test_a_plain_backends_breaker_opens_and_then_refuses_calls_without_calling() -> None:
    handler = Flaky(failures=1000)
    backend = MockBackend("default", handler=handler)
    settings = Settings(
        defaults=DefaultsSettings(retry=NO_WAIT.model_copy(update={"max_attempts": 1})),
        breaker=BreakerSettings(minimum_calls=2, window_size=2, open_seconds=3600),
    )
    store = MemoryStore()
    async with Runtime(settings, store, backends={"default": backend}) as rt:
        await ready(rt)
        codes = [(await rt.execute("qa", {"question": "q"})).steps[0].error_code for _ in range(4)]
        assert codes == ["backend_unavailable"] * 2 + ["circuit_open"] * 2
        assert handler.calls == 2
        assert await rt.breaker_states() == {"default": "open"}  # shared through the store
        report = await rt.health()
    assert report.check("backend:default").details["breaker"] == "open"


async def test_breakers_can_be_switched_off() -> None:
    handler = Flaky(failures=1000)
    settings = Settings(
        defaults=DefaultsSettings(
            retry=NO_WAIT.model_copy(update={"max_attempts": 1}), breakers=False
        ),
        breaker=BreakerSettings(minimum_calls=2, window_size=2),
    )
    backend = MockBackend("default", handler=handler)
    async with Runtime(settings, MemoryStore(), backends={"default": backend}) as rt:
        await ready(rt)
        for _ in range(4):
            await rt.execute("qa", {"question": "q"})
    assert handler.calls == 4


async def test_a_bad_request_does_not_count_against_the_breaker() -> None:
    async def bad(request: PredictRequest) -> dict[str, Any]:
        from dspex.errors import BadRequestError

        raise BadRequestError("no", status=400)

    settings = Settings(breaker=BreakerSettings(minimum_calls=1, window_size=1))
    backend = MockBackend("default", handler=bad)
    async with Runtime(settings, MemoryStore(), backends={"default": backend}) as rt:
        await ready(rt)
        for _ in range(3):
            result = await rt.execute("qa", {"question": "q"})
            assert result.steps[0].error_code == "backend_bad_request"
        assert await rt.breaker_states() == {}

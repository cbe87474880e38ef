"""A forward-only ``dspy`` module behind a coordinator group: its sync LM calls, made in the
engine's worker thread, are routed through the group on the event loop like ``aforward``'s.

The members are real ``dspy`` backends talking HTTP to loopback OpenAI servers scripted to fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import dspy
import pytest
from engine_specs import program
from tests.engine.dspy_native_modules import REF
from tests.resilience.test_coordinator_dspy import SkippingClock
from tests.support.openai_server import OpenAIServer, status

from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.dspy_lm import routed_lm
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.records import ExecutionStatus
from dspex.resilience import Coordinator, RetryPolicy

KEY_ENV = "DSPEX_TEST_NATIVE_ROUTED_KEY"


@pytest.fixture
def servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as a, OpenAIServer() as b:
        yield a, b


def _group(a: OpenAIServer, b: OpenAIServer) -> Coordinator:
    members = [
        DspyBackend(name, model="openai/loopback-model", api_base=s.base_url, api_key_env=KEY_ENV)
        for name, s in (("a", a), ("b", b))
    ]
    policy = RetryPolicy(max_attempts=3, initial_interval=0.5, jitter=0.0)
    return Coordinator("main", members, policy=policy, clock=SkippingClock())


async def test_a_forward_only_module_fails_over_through_the_group(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, b = servers
    a.script(status(401))
    group = _group(a, b)
    spec = program(
        {
            "m": {
                "kind": "dspy",
                "module": f"{REF}:CallsLM",
                "signature": "question: str -> answer: str",
                "backend": "main",
            }
        },
        signature="question: str -> answer: str",
    )
    async with Engine(backends={"main": group}, allowed_imports=(REF,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"question": "What is 6 * 7?"})
    await group.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    step = result.step("m")
    assert [(x.backend, x.outcome.value) for x in step.attempt_details] == [
        ("a", "failed"),
        ("b", "succeeded"),
    ]
    assert (a.request_count, b.request_count) == (1, 1)
    assert list(result.usage) == ["dspex/main"]  # counted once, under the group's LM


async def test_a_sync_call_on_the_event_loops_own_thread_is_still_refused(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    group = _group(*servers)
    with (
        dspy.context(lm=routed_lm(group)),
        pytest.raises(Exception, match="async LM calls only"),
    ):
        dspy.Predict("question -> answer")(question="q")
    await group.aclose()

"""The ``openai`` backend's ``dspy.LM``: DSPy modules (``kind: dspy``) on the same transport.

A ``dspy.LM`` built by the backend sends DSPy's requests on the backend's pooled session; its
failures come back from DSPy as errors that translate to the same dspex classes as the
backend's own; usage lands in DSPy's tracker; a coordinator group records each of its calls as
an attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dspy
import pytest
from dspy.utils.exceptions import LMError
from tests.support.openai_server import (
    OpenAIServer,
    chat_adapter_content,
    delay,
    drop,
    ok,
    status,
)

from dspex.backends.dspy_lm import has_lm
from dspex.backends.errors_map import translate
from dspex.backends.openai_backend import OpenAIBackend
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendUnavailableError,
    ContextWindowError,
    DspexError,
    DspexTimeoutError,
    RateLimitError,
)
from dspex.records import ExecutionStatus
from dspex.resilience import Coordinator, RetryPolicy

MODEL = "loopback-model"
REF = __name__  # the modules below, allow-listed by the name this file was imported under


class AsyncQA(dspy.Module):
    """A module that calls its LM itself, the async way."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.ChainOfThought("question -> answer")

    async def aforward(self, question: str) -> Any:
        return await self.answer.acall(question=question)


class SyncQA(dspy.Module):
    """The same, written the sync way (the engine runs ``forward`` in a worker thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        return self.answer(question=question)


@pytest.fixture
async def backend(openai_server: OpenAIServer) -> AsyncIterator[OpenAIBackend]:
    opened = OpenAIBackend("loopback", base_url=openai_server.base_url, model=MODEL)
    yield opened
    await opened.aclose()


def _spec(cls: str, backend: str = "default") -> dict[str, Any]:
    signature = "question: str -> answer: str"
    module = {"kind": "dspy", "module": f"{REF}:{cls}", "signature": signature}
    return {"name": "p", "signature": signature, "modules": {"m": {**module, "backend": backend}}}


# --- the LM itself ------------------------------------------------------------------------------


async def test_the_lm_is_a_dspy_lm_with_dspys_cache_and_retries_off(
    backend: OpenAIBackend,
) -> None:
    lm = backend.lm
    assert isinstance(lm, dspy.BaseLM)
    assert (lm.model, lm.cache, lm.num_retries) == (MODEL, False, 0)
    assert backend.lm is lm
    assert has_lm(backend)


async def test_the_lm_sends_the_messages_dspy_writes_on_the_backends_session(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    await backend.complete(dspex_request())  # opens the backend's one connection
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=backend.lm):
        prediction = await predict.acall(question="What is 6 * 7?")
    stock = dspy.LM(
        f"openai/{MODEL}",
        api_base=openai_server.base_url,
        api_key="k",
        cache=False,
        num_retries=0,
    )
    with dspy.context(lm=stock):
        await predict.acall(question="What is 6 * 7?")
    _, ours, theirs = openai_server.requests
    assert ours.json["messages"] == theirs.json["messages"]
    assert ours.json["model"] == MODEL
    assert ours.client_port == openai_server.requests[0].client_port  # the same pool
    assert prediction.answer == "answer answer"


async def test_the_lm_adds_the_backends_default_parameters_under_the_calls_own(
    openai_server: OpenAIServer,
) -> None:
    backend = OpenAIBackend(
        "b",
        base_url=openai_server.base_url,
        model=MODEL,
        params={"temperature": 0.9, "top_k": 4},
    )
    with dspy.context(lm=backend.lm):
        await dspy.Predict("question -> answer").acall(question="q", config={"temperature": 0.1})
    await backend.aclose()
    body = openai_server.requests[0].json
    assert (body["temperature"], body["top_k"]) == (0.1, 4)


async def test_the_lm_counts_usage_in_dspys_tracker(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    content = chat_adapter_content({"answer": "four words of answer"})
    openai_server.script(ok(content))
    with dspy.context(lm=backend.lm, track_usage=True):
        prediction = await dspy.Predict("question -> answer").acall(question="q")
    usage = prediction.get_lm_usage()[MODEL]
    assert usage["completion_tokens"] == len(content.split())
    assert usage["prompt_tokens"] > 0


async def test_a_sync_call_from_a_thread_goes_through_the_same_transport(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    def call() -> Any:
        with dspy.context(lm=backend.lm):
            return dspy.Predict("question -> answer")(question="q")

    prediction = await asyncio.to_thread(call)
    assert prediction.answer == "answer answer"
    assert openai_server.request_count == 1


async def test_the_lm_streams_through_dspy_streamify(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    content = chat_adapter_content({"answer": "a streamed answer in several pieces"})
    openai_server.script(ok(content))
    program = dspy.streamify(
        dspy.Predict("question -> answer"),
        stream_listeners=[dspy.streaming.StreamListener(signature_field_name="answer")],
    )
    chunks: list[str] = []
    final: Any = None
    with dspy.context(lm=backend.lm):
        async for item in program(question="q"):
            if isinstance(item, dspy.streaming.StreamResponse):
                chunks.append(item.chunk)
            elif isinstance(item, dspy.Prediction):
                final = item
    assert final is not None
    assert final.answer == "a streamed answer in several pieces"
    assert "".join(chunks).strip() == final.answer
    assert openai_server.requests[0].json["stream"] is True


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (status(429, retry_after=2), RateLimitError),
        (status(503), BackendUnavailableError),
        (status(401), AuthenticationError),
        (
            status(400, body={"error": {"message": "too long", "code": "context_length_exceeded"}}),
            ContextWindowError,
        ),
        (drop(), BackendConnectionError),
    ],
    ids=["429", "503", "401", "context", "drop"],
)
async def test_a_failed_lm_call_translates_to_the_same_dspex_error_as_the_backends(
    backend: OpenAIBackend, openai_server: OpenAIServer, outcome: Any, error: type[DspexError]
) -> None:
    openai_server.script(outcome)
    with pytest.raises(LMError) as info:
        await backend.lm.acall(_hello())
    translated = translate(info.value, "loopback")
    assert type(translated) is error
    if error is RateLimitError:
        assert translated.retry_after == 2.0
    assert openai_server.request_count == 1  # DSPy's retries are off


async def test_an_lm_call_past_the_backends_timeout_is_a_timeout(
    openai_server: OpenAIServer,
) -> None:
    backend = OpenAIBackend("b", base_url=openai_server.base_url, model=MODEL, timeout=0.1)
    openai_server.script(delay(30))
    with pytest.raises(LMError) as info:
        await backend.lm.acall(_hello())
    await backend.aclose()
    assert isinstance(translate(info.value, "b"), DspexTimeoutError)


# --- kind: dspy modules -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["AsyncQA", "SyncQA"])
async def test_a_dspy_module_runs_its_lm_calls_on_the_openai_backend(
    backend: OpenAIBackend, openai_server: OpenAIServer, cls: str
) -> None:
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        result = await engine.run(Program.from_dict(_spec(cls)), {"question": "Capital?"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    assert result.outputs == {"answer": "answer answer"}
    assert openai_server.request_count == 1
    assert result.usage[MODEL].completion_tokens > 0


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
def servers() -> Iterator[tuple[OpenAIServer, OpenAIServer]]:
    with OpenAIServer() as a, OpenAIServer() as b:
        yield a, b


async def test_a_dspy_module_behind_a_group_of_openai_backends_fails_over_with_each_attempt(
    servers: tuple[OpenAIServer, OpenAIServer],
) -> None:
    a, b = servers
    a.script(status(503), status(401))
    members = [
        OpenAIBackend(name, base_url=server.base_url, model=MODEL)
        for name, server in (("a", a), ("b", b))
    ]
    policy = RetryPolicy(max_attempts=3, initial_interval=0.5, jitter=0.0)
    group = Coordinator("main", members, policy=policy, clock=SkippingClock())
    engine = Engine(backends={"main": group}, allowed_imports=(REF,))
    async with engine:
        result = await engine.run(Program.from_dict(_spec("AsyncQA", "main")), {"question": "q"})
    await group.aclose()
    for member in members:
        await member.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    step = result.step("m")
    attempts = [(x.backend, x.outcome.value, x.status) for x in step.attempt_details]
    assert attempts[-1] == ("b", "succeeded", None)
    assert ("a", "failed", 503) in attempts
    assert (a.request_count + b.request_count) == len(attempts)
    assert step.attempt_details[-1].completion_tokens > 0


def _hello() -> Any:
    """A ``dspy.lm15`` request, as DSPy's own callers (and a coordinator group) make them."""
    from dspy.lm15 import Message, Request

    return Request(model=MODEL, messages=(Message.user("hi"),))


def dspex_request() -> Any:
    from dspex.backends.base import PredictRequest
    from dspex.signatures.signature import Signature

    return PredictRequest(Signature.parse("question -> answer"), {"question": "warm up"})

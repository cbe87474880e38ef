"""Traces inside a ``dspy`` module: each predictor call (a child step) records the inputs and
outputs DSPy reported for it, each of its LM calls the messages and completions (when asked),
redacted as the module's own; spans nest the predictor calls and their LM calls under the
module's span.

The LM is a real ``dspy`` backend talking HTTP to the loopback OpenAI server; the records go
through a real store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.engine.dspy_native_modules import REF
from tests.store._clock import FakeClock
from tests.store.conftest import open_kind
from tests.support.openai_server import OpenAIServer

from dspex.backends.dspy_backend import DspyBackend
from dspex.capture import REDACTED
from dspex.config import CaptureSettings, Settings
from dspex.runtime import Runtime
from dspex.store.base import Store
from dspex.telemetry import Telemetry

KEY_ENV = "DSPEX_TEST_CHILD_TRACES_KEY"
MODEL = "openai/loopback-model"
QUESTION = "What is the launch code 0000-7431?"
PROGRAM = {
    "name": "two",
    "signature": "question: str -> answer: str",
    "modules": {
        "m": {
            "kind": "dspy",
            "module": f"{REF}:TwoSteps",
            "signature": {
                "inputs": {"question": {"type": "str", "sensitive": True}},
                "outputs": {"answer": "str"},
            },
        }
    },
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as running:
        yield running


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


@pytest.fixture
async def runtime(
    request: pytest.FixtureRequest, server: OpenAIServer, exporter: InMemorySpanExporter
) -> AsyncIterator[tuple[Runtime, Store]]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    backend = DspyBackend("default", model=MODEL, api_base=server.base_url, api_key_env=KEY_ENV)
    async with (
        open_kind("sqlite", request, FakeClock()) as store,
        Runtime(
            Settings(allowed_imports=(REF,), capture=CaptureSettings(messages=True)),
            store,
            backends={"default": backend},
            worker_id="worker-1",
            telemetry=Telemetry(tracer=provider.get_tracer("test")),
        ) as rt,
    ):
        yield rt, store
    await backend.aclose()


async def test_predictor_calls_record_their_inputs_outputs_and_lm_exchanges_redacted(
    runtime: tuple[Runtime, Store], server: OpenAIServer, exporter: InMemorySpanExporter
) -> None:
    rt, store = runtime
    info = await rt.register(PROGRAM)
    info = await rt.initialize(info.name, info.version)
    assert info.status == "ready", info.error
    result = await rt.execute("two", {"question": QUESTION})
    assert result.status == "completed", result.error

    parent, draft, polish = await store.list_steps(result.execution_id)
    assert [s.module for s in (parent, draft, polish)] == ["m", "m.draft", "m.polish"]
    assert parent.inputs == {"question": REDACTED}
    # the predictor's field is named as the module's: redacted there too
    assert draft.inputs == {"question": REDACTED}
    assert draft.outputs is not None
    assert set(draft.outputs) == {"draft"}
    assert polish.inputs == draft.outputs  # what one predictor answered, the next was given
    assert polish.outputs is not None
    assert set(polish.outputs) == {"answer"}

    lm_calls = {a.module: a for a in await store.list_attempts(result.execution_id)}
    draft_call = lm_calls["m.draft"]
    assert draft_call.messages is not None
    assert [m["role"] for m in draft_call.messages] == ["system", "user"]
    assert draft_call.response is not None
    assert QUESTION in json.dumps(server.requests[0].json)  # the LM got it...
    recorded = json.dumps([draft_call.messages, draft_call.response])
    assert QUESTION not in recorded  # ...the trace does not keep it
    assert REDACTED in recorded

    spans = {s.name: s for s in exporter.get_finished_spans()}
    module = spans["dspex.module m"]
    child = spans["dspex.module m.draft"]
    chats = [s for s in exporter.get_finished_spans() if s.name == f"chat {MODEL}"]
    assert len(chats) == 2
    assert module.context is not None
    assert child.context is not None
    assert child.parent is not None
    assert child.parent.span_id == module.context.span_id
    draft_chat = next(s for s in chats if (s.parent and s.parent.span_id) == child.context.span_id)
    attributes = dict(draft_chat.attributes or {})
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.usage.input_tokens"] == draft_call.prompt_tokens > 0
    exported = json.dumps(
        [str(v) for s in exporter.get_finished_spans() for v in (s.attributes or {}).values()]
    )
    assert QUESTION not in exported

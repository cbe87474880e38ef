"""The ``openai`` backend in a streaming run: with a token sink that wants the module, ``complete``
streams the request and hands the sink each output field's text as the loopback server's chunks
arrive; without one, nothing changes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tests.support.openai_server import OpenAIServer, chat_adapter_content, delay, ok, truncated

from dspex.backends.base import PredictRequest
from dspex.backends.openai_backend import OpenAIBackend
from dspex.backends.streaming import TOKEN_SINK
from dspex.errors import BackendConnectionError, DspexTimeoutError, ParseError
from dspex.signatures.signature import Signature

QA = Signature.parse("question: str -> answer: str, score: int")
MODEL = "loopback-model"
ANSWER = "forty-two, said the machine after a while"


class RecordingSink:
    """A token sink that keeps what it is told, in order."""

    def __init__(self, modules: tuple[str, ...] = ("qa",)) -> None:
        self.modules = modules
        self.calls: list[tuple[str, ...]] = []

    def wants(self, module: str) -> bool:
        return module in self.modules

    def begin(self, module: str) -> None:
        self.calls.append(("begin", module))

    def token(self, module: str, field: str, text: str) -> None:
        self.calls.append(("token", module, field, text))

    def text(self, field: str = "answer") -> str:
        return "".join(c[3] for c in self.calls if c[0] == "token" and c[2] == field)


@contextmanager
def sinking(sink: RecordingSink) -> Iterator[None]:
    token = TOKEN_SINK.set(sink)
    try:
        yield
    finally:
        TOKEN_SINK.reset(token)


def _request(**kwargs: Any) -> PredictRequest:
    return PredictRequest(
        signature=QA, inputs={"question": "What is 6 * 7?"}, module="qa", **kwargs
    )


@pytest.fixture
async def backend(openai_server: OpenAIServer) -> AsyncIterator[OpenAIBackend]:
    opened = OpenAIBackend("loopback", base_url=openai_server.base_url, model=MODEL)
    yield opened
    await opened.aclose()


async def test_a_sink_gets_the_answer_field_by_field_as_it_streams(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok(chat_adapter_content({"answer": ANSWER, "score": 42})))
    sink = RecordingSink()
    with sinking(sink):
        result = await backend.complete(_request())
    assert result.outputs == {"answer": ANSWER, "score": 42}
    assert sink.calls[0] == ("begin", "qa")
    assert len([c for c in sink.calls if c[0] == "token"]) > 2
    assert sink.text("answer") == ANSWER
    assert sink.text("score") == "42"
    body = openai_server.requests[0].json
    assert body["stream"] is True
    assert result.usage[MODEL].completion_tokens > 0  # asked for with stream_options


async def test_the_streamed_request_sends_the_plain_calls_messages(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    await backend.complete(_request())
    with sinking(RecordingSink()):
        await backend.complete(_request())
    plain, streamed = (r.json for r in openai_server.requests)
    assert "stream" not in plain
    assert streamed["messages"] == plain["messages"]


async def test_a_module_the_sink_does_not_want_is_called_as_usual(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    sink = RecordingSink(modules=("other",))
    with sinking(sink):
        result = await backend.complete(_request())
    assert set(result.outputs) == {"answer", "score"}
    assert sink.calls == []
    assert "stream" not in openai_server.requests[0].json


async def test_an_unreadable_streamed_answer_falls_back_to_json_as_a_new_attempt(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(
        ok("[[ ## answer ## ]]\nhalf an answer"), ok('{"answer": "A", "score": 1}')
    )
    sink = RecordingSink()
    with sinking(sink):
        result = await backend.complete(_request())
    assert result.outputs == {"answer": "A", "score": 1}
    begins = [i for i, c in enumerate(sink.calls) if c[0] == "begin"]
    assert len(begins) == 2
    assert sink.text() == "half an answer"  # the fallback is not streamed
    fallback = openai_server.requests[1].json
    assert "stream" not in fallback
    assert fallback["response_format"] == {"type": "json_object"}


async def test_with_the_json_adapter_string_values_stream_from_the_object(
    openai_server: OpenAIServer,
) -> None:
    backend = OpenAIBackend(
        "loopback", base_url=openai_server.base_url, model=MODEL, adapter="json"
    )
    try:
        openai_server.script(ok(json.dumps({"answer": ANSWER, "score": 42})))
        sink = RecordingSink()
        with sinking(sink):
            result = await backend.complete(_request())
    finally:
        await backend.aclose()
    assert result.outputs == {"answer": ANSWER, "score": 42}
    assert sink.text() == ANSWER
    assert sink.text("score") == ""  # not a string: it comes with the result
    assert openai_server.requests[0].json["response_format"] == {"type": "json_object"}


async def test_with_the_json_adapter_an_unreadable_answer_is_a_parse_error(
    openai_server: OpenAIServer,
) -> None:
    backend = OpenAIBackend(
        "loopback", base_url=openai_server.base_url, model=MODEL, adapter="json"
    )
    try:
        openai_server.script(ok("not json at all"))
        with sinking(RecordingSink()), pytest.raises(ParseError):
            await backend.complete(_request())
    finally:
        await backend.aclose()
    assert openai_server.request_count == 1


async def test_a_stream_that_breaks_off_is_a_retryable_connection_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(truncated())
    sink = RecordingSink()
    with sinking(sink), pytest.raises(BackendConnectionError, match="ended before"):
        await backend.complete(_request())
    assert sink.calls[0] == ("begin", "qa")


async def test_a_streamed_call_keeps_the_calls_timeout(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(delay(30))
    with sinking(RecordingSink()), pytest.raises(DspexTimeoutError, match=r"within 0\.1s"):
        await backend.complete(_request(timeout=0.1))

"""The ``openai`` backend on real HTTP: the loopback OpenAI-compatible server answers.

The messages are compared with what ``dspy.LM`` itself sends the same server for the same
module (``dspy.Predict``/``dspy.ChainOfThought`` run on a ``dspy.LM``), request by request.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from typing import Any

import dspy
import pytest
from pydantic import BaseModel
from tests.support.openai_server import (
    OpenAIServer,
    Outcome,
    chat_adapter_content,
    delay,
    drop,
    malformed,
    ok,
    status,
    truncated,
)

from dspex.backends.base import Backend, PredictRequest, Usage
from dspex.backends.openai_backend import OpenAIBackend, StreamEvent
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendUnavailableError,
    BadRequestError,
    ConfigError,
    ContextWindowError,
    DspexTimeoutError,
    MalformedResponseError,
    ParseError,
    QuotaExceededError,
    RateLimitError,
    is_retryable,
)
from dspex.signatures.signature import Signature
from dspex.signatures.types import FieldSpec, ModelType, Scalar

QA = Signature.parse("question: str -> answer: str, score: int")
KEY_ENV = "DSPEX_TEST_OPENAI_KEY"
MODEL = "loopback-model"


def _request(sig: Signature = QA, **kwargs: Any) -> PredictRequest:
    inputs = kwargs.pop("inputs", {"question": "What is 6 * 7?"})
    return PredictRequest(signature=sig, inputs=inputs, **kwargs)


def _backend(server: OpenAIServer, **options: Any) -> OpenAIBackend:
    options.setdefault("api_key_env", KEY_ENV)
    return OpenAIBackend("loopback", base_url=server.base_url, model=MODEL, **options)


@pytest.fixture
async def backend(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[OpenAIBackend]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    opened = _backend(openai_server)
    yield opened
    await opened.aclose()


def _dspy_lm(server: OpenAIServer) -> Any:
    """What a DSPy user would build for the same endpoint."""
    return dspy.LM(
        f"openai/{MODEL}", api_base=server.base_url, api_key="k", cache=False, num_retries=0
    )


# --- the messages are DSPy's --------------------------------------------------------------------


class Citation(BaseModel):
    source: str
    page: int


CITE = Signature(
    name="Cite",
    instructions="Cite the source that answers the question.",
    input_fields=(FieldSpec("question", Scalar("str"), description="what the user asked"),),
    output_fields=(FieldSpec("citation", ModelType(Citation)),),
)

CASES: dict[str, tuple[Signature, str, dict[str, Any], list[dict[str, Any]]]] = {
    "predict": (QA, "predict", {"question": "What is 6 * 7?"}, []),
    "chain_of_thought": (QA, "chain_of_thought", {"question": "Why is the sky blue?"}, []),
    "typed fields": (
        Signature.parse(
            "question: str, passages: list[str], k: int, strict: bool, hint: optional[str]"
            " -> label: Literal['yes', 'no'], confidence: probability, tags: list[str],"
            " scores: dict[str, float]",
            instructions="Label the question.",
        ),
        "predict",
        {
            "question": "Ünïcode — and “quotes”?",
            "passages": ["first passage", "second one"],
            "k": 3,
            "strict": False,
            "hint": None,
        },
        [],
    ),
    "pydantic output with instructions": (CITE, "predict", {"question": "Who wrote it?"}, []),
    "demos": (
        QA,
        "predict",
        {"question": "What is 2 + 2?"},
        [
            {"question": "What is 1 + 1?", "answer": "two", "score": 2},
            {"question": "What is 3 + 3?", "answer": "six", "score": 6},
        ],
    ),
}


ANSWERS: dict[str, dict[str, Any]] = {
    "predict": {"answer": "42", "score": 42},
    "chain_of_thought": {"reasoning": "light scatters", "answer": "Rayleigh", "score": 1},
    "typed fields": {"label": "yes", "confidence": 0.9, "tags": ["a"], "scores": {"a": 1.0}},
    "pydantic output with instructions": {"citation": {"source": "wiki", "page": 3}},
    "demos": {"answer": "four", "score": 4},
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_messages_are_the_ones_dspy_lm_sends_for_the_same_module(
    backend: OpenAIBackend, openai_server: OpenAIServer, case: str
) -> None:
    sig, kind, inputs, demos = CASES[case]
    answer = chat_adapter_content(ANSWERS[case])
    openai_server.script(ok(answer), ok(answer))
    module = dspy.ChainOfThought if kind == "chain_of_thought" else dspy.Predict
    with dspy.context(lm=_dspy_lm(openai_server)):
        await module(sig.to_dspy()).acall(**inputs, demos=demos)
    kind_: Any = kind
    await backend.complete(_request(sig, inputs=inputs, kind=kind_, demos=demos))
    theirs, ours = (r.json for r in openai_server.requests)
    assert ours["messages"] == theirs["messages"]
    assert ours["model"] == MODEL


async def test_the_json_adapter_sends_the_messages_dspy_json_adapter_writes(
    openai_server: OpenAIServer,
) -> None:
    with dspy.context(lm=_dspy_lm(openai_server), adapter=dspy.JSONAdapter()):
        await dspy.Predict(QA.to_dspy()).acall(question="q?")
    backend = _backend(openai_server, api_key_env=None, adapter="json")
    result = await backend.complete(_request(inputs={"question": "q?"}))
    await backend.aclose()
    theirs, ours = (r.json for r in openai_server.requests)
    assert ours["messages"] == theirs["messages"]
    assert ours["response_format"] == {"type": "json_object"}
    assert result.outputs == {"answer": "answer answer", "score": 1}


# --- answers ------------------------------------------------------------------------------------


def test_the_backend_satisfies_the_backend_protocol() -> None:
    assert isinstance(OpenAIBackend(base_url="http://127.0.0.1:1/v1", model="m"), Backend)


async def test_typed_outputs_are_parsed_from_the_answer(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok(chat_adapter_content({"answer": "forty-two", "score": 42})))
    result = await backend.complete(_request())
    assert result.outputs == {"answer": "forty-two", "score": 42}
    assert result.model == MODEL
    assert result.latency_ms > 0


async def test_chain_of_thought_reasoning_goes_to_extras_when_not_declared(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    content = chat_adapter_content({"reasoning": "six sevens", "answer": "42", "score": 42})
    openai_server.script(ok(content))
    result = await backend.complete(_request(kind="chain_of_thought"))
    assert result.outputs == {"answer": "42", "score": 42}
    assert result.extras == {"reasoning": "six sevens"}


async def test_pydantic_model_outputs_are_returned_as_plain_dicts(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok(chat_adapter_content({"citation": {"source": "wiki", "page": 3}})))
    result = await backend.complete(_request(CITE))
    assert result.outputs == {"citation": {"source": "wiki", "page": 3}}


async def test_usage_is_read_from_the_reply(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    content = chat_adapter_content({"answer": "yes", "score": 1})
    openai_server.script(ok(content))
    result = await backend.complete(_request())
    sent = openai_server.requests[0].json["messages"]
    prompt_words = len("\n\n".join(m["content"] for m in sent).split())
    assert result.usage == {MODEL: Usage(prompt_words, len(content.split()))}


async def test_an_unreadable_chat_answer_is_asked_again_in_json_mode_as_dspy_does(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    answer = json.dumps({"answer": "42", "score": 42})
    openai_server.script(ok("no fields here"), ok(answer), ok("no fields here"), ok(answer))
    with dspy.context(lm=_dspy_lm(openai_server)):
        theirs = await dspy.Predict(QA.to_dspy()).acall(question="What is 6 * 7?")
    result = await backend.complete(_request())
    assert result.outputs == {"answer": theirs.answer, "score": theirs.score}
    their_first, their_second, first, second = (r.json for r in openai_server.requests)
    assert first["messages"] == their_first["messages"]
    assert second["messages"] == their_second["messages"]  # DSPy's JSONAdapter fallback
    assert "response_format" not in first
    assert second["response_format"] == {"type": "json_object"}
    # both requests are paid for
    assert result.usage[MODEL].completion_tokens == 3 + len(answer.split())


async def test_an_empty_answer_is_asked_again_in_json_mode(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok(""), ok(json.dumps({"answer": "a", "score": 1})))
    result = await backend.complete(_request())
    assert result.outputs == {"answer": "a", "score": 1}
    assert openai_server.request_count == 2


async def test_an_answer_unreadable_in_both_modes_is_a_parse_error_after_two_requests(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok("no fields here"), ok("still nothing"))
    with pytest.raises(ParseError) as info:
        await backend.complete(_request())
    assert info.value.backend == "loopback"
    assert not is_retryable(info.value)
    assert openai_server.request_count == 2


async def test_json_mode_off_asks_again_without_a_response_format(
    openai_server: OpenAIServer,
) -> None:
    backend = _backend(openai_server, api_key_env=None, json_mode="off")
    openai_server.script(ok("no fields"), ok(json.dumps({"answer": "a", "score": 1})))
    await backend.complete(_request())
    await backend.aclose()
    assert "response_format" not in openai_server.requests[1].json


async def test_concurrent_calls_all_complete(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(backend.complete(_request())) for _ in range(8)]
    assert all(t.result().outputs["score"] == 1 for t in tasks)
    assert openai_server.request_count == 8


# --- what is sent ------------------------------------------------------------------------------


async def test_the_api_key_from_the_environment_is_sent_as_a_bearer_token(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    await backend.complete(_request())
    headers = {k.lower(): v for k, v in openai_server.requests[0].headers.items()}
    assert headers["authorization"] == "Bearer sk-loopback"
    assert openai_server.requests[0].path == "/v1/chat/completions"


async def test_another_key_header_gets_the_key_as_it_is_and_the_base_urls_query_is_kept(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "azure-key")
    backend = OpenAIBackend(
        "azure",
        base_url=f"{openai_server.base_url}?api-version=2024-10-21",
        model=MODEL,
        api_key_env=KEY_ENV,
        api_key_header="api-key",
    )
    await backend.complete(_request())
    await backend.aclose()
    recorded = openai_server.requests[0]
    headers = {k.lower(): v for k, v in recorded.headers.items()}
    assert headers["api-key"] == "azure-key"
    assert "authorization" not in headers
    assert recorded.path == "/v1/chat/completions?api-version=2024-10-21"


async def test_headers_and_default_parameters_are_sent_and_the_modules_config_wins(
    openai_server: OpenAIServer,
) -> None:
    backend = _backend(
        openai_server,
        api_key_env=None,
        headers={"X-Team": "search"},
        params={"temperature": 0.7, "max_tokens": 64, "top_k": 5},
    )
    await backend.complete(_request(config={"temperature": 0.0, "seed": 7}))
    await backend.aclose()
    recorded = openai_server.requests[0]
    assert {k.lower(): v for k, v in recorded.headers.items()}["x-team"] == "search"
    body = recorded.json
    assert (body["temperature"], body["max_tokens"], body["top_k"], body["seed"]) == (
        0.0,
        64,
        5,
        7,
    )
    assert "authorization" not in {k.lower() for k in recorded.headers}


async def test_each_complete_is_one_request_on_a_reused_connection(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    for _ in range(4):
        await backend.complete(_request())
    assert openai_server.request_count == 4
    assert len({r.client_port for r in openai_server.requests}) == 1


async def test_max_connections_bounds_the_connections_open_at_once(
    openai_server: OpenAIServer,
) -> None:
    openai_server.latency = 0.05
    backend = _backend(openai_server, api_key_env=None, max_connections=2)
    async with asyncio.TaskGroup() as group:
        for _ in range(6):
            group.create_task(backend.complete(_request()))
    await backend.aclose()
    assert openai_server.request_count == 6
    assert len({r.client_port for r in openai_server.requests}) == 2


# --- failures -----------------------------------------------------------------------------------


async def test_rate_limit_with_retry_after_is_a_rate_limit_error_after_one_request(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(429, retry_after=2, message="slow down"))
    with pytest.raises(RateLimitError) as info:
        await backend.complete(_request())
    assert (info.value.retry_after, info.value.status) == (2.0, 429)
    assert info.value.backend == "loopback"
    assert "slow down" in info.value.message
    assert is_retryable(info.value)
    assert openai_server.request_count == 1


async def test_retry_after_as_an_http_date_is_read_as_seconds_from_now(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(503, retry_after_date=120))
    with pytest.raises(BackendUnavailableError) as info:
        await backend.complete(_request())
    assert info.value.retry_after is not None
    assert 60 <= info.value.retry_after <= 120


async def test_retry_after_in_milliseconds_is_read_as_seconds(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(429, headers={"retry-after-ms": "1500"}))
    with pytest.raises(RateLimitError) as info:
        await backend.complete(_request())
    assert info.value.retry_after == 1.5


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (402, QuotaExceededError),
        (403, AuthenticationError),
        (404, BadRequestError),
        (408, DspexTimeoutError),
        (500, BackendUnavailableError),
        (502, BackendUnavailableError),
        (503, BackendUnavailableError),
    ],
)
async def test_an_error_status_is_the_matching_error_after_one_request(
    backend: OpenAIBackend, openai_server: OpenAIServer, code: int, error: type[Exception]
) -> None:
    openai_server.script(status(code, message=f"scripted {code}"))
    with pytest.raises(error) as info:
        await backend.complete(_request())
    assert f"scripted {code}" in str(info.value)
    if code != 408:
        assert getattr(info.value, "status", None) == code
    assert openai_server.request_count == 1


async def test_a_context_length_error_is_a_context_window_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    body = {
        "error": {
            "message": "This model's maximum context length is 4096 tokens.",
            "type": "invalid_request_error",
            "code": "context_length_exceeded",
        }
    }
    openai_server.script(status(400, body=body))
    with pytest.raises(ContextWindowError) as info:
        await backend.complete(_request())
    assert info.value.status == 400
    assert "maximum context length" in info.value.message


async def test_an_error_sent_with_status_200_is_read_by_its_code(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(200, body={"error": {"code": 429, "message": "busy"}}))
    with pytest.raises(RateLimitError, match="busy"):
        await backend.complete(_request())


async def test_a_dropped_connection_is_a_retryable_connection_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(drop())
    with pytest.raises(BackendConnectionError) as info:
        await backend.complete(_request())
    assert is_retryable(info.value)
    assert openai_server.request_count == 1


async def test_a_refused_connection_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    backend = OpenAIBackend("gone", base_url=f"http://127.0.0.1:{port}/v1", model=MODEL)
    with pytest.raises(BackendConnectionError, match=r"Cannot connect"):
        await backend.complete(_request())
    await backend.aclose()


@pytest.mark.parametrize(
    "outcome", [malformed(), malformed(""), truncated()], ids=["html", "empty", "truncated"]
)
async def test_a_reply_that_is_not_a_completion_is_a_retryable_malformed_response(
    backend: OpenAIBackend, openai_server: OpenAIServer, outcome: Outcome
) -> None:
    openai_server.script(outcome)
    with pytest.raises(MalformedResponseError) as info:
        await backend.complete(_request())
    assert is_retryable(info.value)
    assert openai_server.request_count == 1  # the reply itself was unreadable: no JSON repair


async def test_json_that_is_not_a_chat_completion_is_a_malformed_response(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(200, body={"object": "list", "data": []}))
    with pytest.raises(MalformedResponseError, match=r"choices\[0\]"):
        await backend.complete(_request())


async def test_a_json_reply_that_is_not_an_object_is_a_retryable_malformed_response(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(malformed('[{"choices": []}]'))
    with pytest.raises(MalformedResponseError, match=r"the reply is not a JSON object") as info:
        await backend.complete(_request())
    assert is_retryable(info.value)


async def test_an_answer_slower_than_the_requests_timeout_is_a_timeout_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(delay(30))
    with pytest.raises(DspexTimeoutError, match=r"within 0\.1s \(module answer\)"):
        await backend.complete(_request(timeout=0.1, module="answer"))
    # the backend answers again afterwards
    result = await backend.complete(_request(timeout=5))
    assert set(result.outputs) == {"answer", "score"}


async def test_the_backends_timeout_applies_when_the_request_sets_none(
    openai_server: OpenAIServer,
) -> None:
    backend = _backend(openai_server, api_key_env=None, timeout=0.1)
    openai_server.script(delay(30))
    with pytest.raises(DspexTimeoutError, match=r"within 0\.1s"):
        await backend.complete(_request())
    await backend.aclose()


async def test_a_missing_api_key_is_an_authentication_error_before_any_request(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = _backend(openai_server)
    with pytest.raises(AuthenticationError, match=KEY_ENV):
        await backend.complete(_request())
    health = await backend.health()
    assert (health.status, health.details["code"]) == ("unhealthy", "backend_auth")
    assert KEY_ENV in health.reason
    assert openai_server.request_count == 0


async def test_health_is_healthy_without_making_a_request(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    health = await backend.health()
    assert health.status == "healthy"
    assert health.details == {"kind": "openai", "model": MODEL, "base_url": backend.base_url}
    assert openai_server.request_count == 0


@pytest.mark.parametrize("url", ["localhost:8000/v1", "ftp://host/v1", "http:///v1", ""])
def test_a_base_url_that_is_not_http_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        OpenAIBackend(base_url=url, model="m")


@pytest.mark.parametrize(("option", "value"), [("adapter", "xml"), ("json_mode", "json_schema")])
def test_an_unknown_adapter_or_json_mode_is_a_config_error(option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=option):
        OpenAIBackend(base_url="http://127.0.0.1:1/v1", model="m", **{option: value})


# --- sessions -----------------------------------------------------------------------------------


async def test_a_session_is_made_on_the_first_request_and_closed_by_aclose(
    backend: OpenAIBackend,
) -> None:
    assert backend.transport.open_sessions == 0
    await backend.complete(_request())
    await backend.complete(_request())
    assert backend.transport.open_sessions == 1
    await backend.aclose()
    assert backend.transport.open_sessions == 0
    # and it opens again when used again
    await backend.complete(_request())
    assert backend.transport.open_sessions == 1


def test_each_event_loop_gets_its_own_session(openai_server: OpenAIServer) -> None:
    backend = _backend(openai_server, api_key_env=None)

    async def call() -> dict[str, Any]:
        return (await backend.complete(_request())).outputs

    first = asyncio.run(call())
    second = asyncio.run(call())  # the first loop's session went with its loop
    assert first == second
    assert openai_server.request_count == 2
    assert len({r.client_port for r in openai_server.requests}) == 2
    asyncio.run(backend.aclose())
    assert backend.transport.open_sessions == 0


# --- streaming ----------------------------------------------------------------------------------


async def _stream(backend: OpenAIBackend, request: PredictRequest) -> list[StreamEvent]:
    return [event async for event in backend.stream(request)]


async def test_a_stream_yields_the_text_as_it_arrives_then_the_parsed_result(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    content = chat_adapter_content({"answer": "forty-two, said the machine", "score": 42})
    openai_server.script(ok(content))
    events = await _stream(backend, _request())
    deltas = [e.delta for e in events[:-1]]
    assert len(deltas) > 3
    assert "".join(deltas) == content
    result = events[-1].result
    assert result is not None
    assert result.outputs == {"answer": "forty-two, said the machine", "score": 42}
    assert result.usage[MODEL].completion_tokens == len(content.split())
    body = openai_server.requests[0].json
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


async def test_a_stream_sends_the_same_messages_as_a_plain_call(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    await backend.complete(_request())
    await _stream(backend, _request())
    plain, streamed = (r.json for r in openai_server.requests)
    assert streamed["messages"] == plain["messages"]


async def test_a_stream_that_ends_before_its_finish_is_a_connection_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(truncated())
    with pytest.raises(BackendConnectionError, match="ended before"):
        await _stream(backend, _request())


async def test_a_stream_refused_with_a_status_is_the_matching_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(429, retry_after=3))
    with pytest.raises(RateLimitError) as info:
        await _stream(backend, _request())
    assert info.value.retry_after == 3.0


async def test_a_streamed_answer_that_cannot_be_read_is_a_parse_error_without_a_second_request(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok("no fields here"))
    with pytest.raises(ParseError):
        await _stream(backend, _request())
    assert openai_server.request_count == 1


async def test_the_mock_backends_knobs_and_the_keys_dspex_writes_are_not_taken_from_config(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    config = {"mock_latency_ms": 5, "model": "other", "stream": True, "top_p": 0.5}
    await backend.complete(_request(config=config))
    body = openai_server.requests[0].json
    assert (body["model"], body["top_p"]) == (MODEL, 0.5)
    assert "mock_latency_ms" not in body
    assert "stream" not in body


def test_sync_calls_in_a_forked_child_run_on_a_loop_of_the_childs_own(
    openai_server: OpenAIServer,
) -> None:
    backend = _backend(openai_server, api_key_env=None)
    request = _request()

    def call() -> Any:
        return backend.transport.run_sync(lambda: backend.complete(request))

    assert call().outputs["score"] == 1  # the helper loop's thread now runs in this process
    pid = os.fork()
    if pid == 0:  # the child: a hang would end in SIGALRM, never block the suite
        signal.alarm(20)
        try:
            code = 0 if call().outputs["score"] == 1 else 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status_code = os.waitpid(pid, 0)
    backend.transport.close()
    assert os.waitstatus_to_exitcode(status_code) == 0
    assert openai_server.request_count == 2


async def test_a_stream_that_stalls_longer_than_the_timeout_is_a_timeout_error(
    backend: OpenAIBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(delay(30))
    with pytest.raises(DspexTimeoutError):
        await _stream(backend, _request(timeout=0.1))

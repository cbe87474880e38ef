"""The dspy backend: real DSPy predictors on DummyLM and on real HTTP to the loopback server.

DummyLM supports DSPy's async path (its ``aforward`` answers synchronously inside the coroutine),
so the plain-output tests use it. The loopback server covers what DummyLM cannot: real HTTP through
``dspy.LM`` (its lm15 engine), usage reported by a provider, status codes, ``Retry-After``,
dropped connections and slow answers.
"""

from __future__ import annotations

import asyncio
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
from dspex.backends.dspy_backend import DspyBackend
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendUnavailableError,
    BadRequestError,
    ConfigError,
    DspexTimeoutError,
    MalformedResponseError,
    ParseError,
    RateLimitError,
    is_retryable,
    should_failover,
)
from dspex.signatures.signature import Signature
from dspex.signatures.types import FieldSpec, ModelType, Scalar

QA = Signature.parse("question: str -> answer: str, score: int")
KEY_ENV = "DSPEX_TEST_LOOPBACK_KEY"


def _request(sig: Signature = QA, **kwargs: Any) -> PredictRequest:
    inputs = kwargs.pop("inputs", {"question": "What is 6 * 7?"})
    return PredictRequest(signature=sig, inputs=inputs, **kwargs)


@pytest.fixture
def http_backend(openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch) -> DspyBackend:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    return DspyBackend(
        "loopback",
        model="openai/loopback-model",
        api_base=openai_server.base_url,
        api_key_env=KEY_ENV,
    )


# --- DummyLM ------------------------------------------------------------------------------------


def test_backend_satisfies_the_backend_protocol() -> None:
    assert isinstance(DspyBackend(lm=dspy.utils.DummyLM([])), Backend)


async def test_predict_returns_the_declared_outputs_typed() -> None:
    backend = DspyBackend(lm=dspy.utils.DummyLM([{"answer": "42", "score": "7"}]))
    result = await backend.complete(_request())
    assert result.outputs == {"answer": "42", "score": 7}
    assert result.model == "dummy"
    assert result.latency_ms > 0


async def test_chain_of_thought_reasoning_goes_to_extras_when_not_declared() -> None:
    lm = dspy.utils.DummyLM([{"reasoning": "6 times 7", "answer": "42", "score": "1"}])
    result = await DspyBackend(lm=lm).complete(_request(kind="chain_of_thought"))
    assert result.outputs == {"answer": "42", "score": 1}
    assert result.extras == {"reasoning": "6 times 7"}


async def test_chain_of_thought_reasoning_is_an_output_when_the_signature_declares_it() -> None:
    sig = Signature.parse("question -> reasoning: reasoning_chain, answer")
    lm = dspy.utils.DummyLM([{"reasoning": '["a", "b"]', "answer": "42"}])
    result = await DspyBackend(lm=lm).complete(_request(sig, kind="chain_of_thought"))
    assert result.outputs == {"reasoning": ["a", "b"], "answer": "42"}
    assert result.extras == {}


class Citation(BaseModel):
    source: str
    page: int


async def test_pydantic_model_outputs_are_returned_as_plain_dicts() -> None:
    sig = Signature(
        name="Cite",
        input_fields=(FieldSpec("question", Scalar("str")),),
        output_fields=(FieldSpec("citation", ModelType(Citation)),),
    )
    lm = dspy.utils.DummyLM([{"citation": '{"source": "wiki", "page": 3}'}])
    result = await DspyBackend(lm=lm).complete(_request(sig))
    assert result.outputs == {"citation": {"source": "wiki", "page": 3}}


async def test_the_predictor_is_built_once_per_signature_and_kind() -> None:
    lm = dspy.utils.DummyLM([{"answer": "a", "score": "1"}] * 3)
    backend = DspyBackend(lm=lm)
    first = backend._predictor(QA, "predict")
    await backend.complete(_request())
    assert backend._predictor(QA, "predict") is first
    assert backend._predictor(QA, "chain_of_thought") is not first


async def test_unparseable_answer_raises_parse_error() -> None:
    lm = dspy.utils.DummyLM([{"wrong": "x"}, {"wrong": "y"}])
    with pytest.raises(ParseError) as info:
        await DspyBackend("dummy-backend", lm=lm).complete(_request())
    assert info.value.backend == "dummy-backend"
    assert not info.value.retryable


async def test_health_is_healthy_for_a_ready_lm_without_calling_it() -> None:
    health = await DspyBackend(lm=dspy.utils.DummyLM([])).health()
    assert health.status == "healthy"
    assert health.details["model"] == "dummy"


def test_model_and_lm_are_mutually_exclusive() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        DspyBackend(model="openai/x", lm=dspy.utils.DummyLM([]))
    with pytest.raises(ConfigError, match="exactly one"):
        DspyBackend()


def test_connection_settings_need_a_model_string() -> None:
    with pytest.raises(ConfigError, match="only with model"):
        DspyBackend(lm=dspy.utils.DummyLM([]), api_base="http://127.0.0.1:1")


@pytest.mark.parametrize("key", ["num_retries", "cache", "api_key", "api_base"])
async def test_lm_kwargs_cannot_override_retries_caching_or_credentials(key: str) -> None:
    backend = DspyBackend(model="openai/x", lm_kwargs={key: 1})
    with pytest.raises(ConfigError, match=key):
        await backend.complete(_request())


# --- the loopback server ------------------------------------------------------------------------


async def test_http_call_returns_parsed_typed_outputs(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok(chat_adapter_content({"answer": "forty-two", "score": 42})))
    result = await http_backend.complete(_request())
    assert result.outputs == {"answer": "forty-two", "score": 42}
    assert result.model == "openai/loopback-model"


async def test_http_call_counts_the_usage_the_provider_reported(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    content = chat_adapter_content({"answer": "yes", "score": 1})
    openai_server.script(ok(content))
    result = await http_backend.complete(_request())
    sent = openai_server.requests[0].json["messages"]
    prompt_words = len("\n\n".join(m["content"] for m in sent).split())
    assert result.usage == {
        "openai/loopback-model": Usage(
            prompt_tokens=prompt_words, completion_tokens=len(content.split())
        )
    }


async def test_http_call_sends_the_api_key_from_the_environment(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    await http_backend.complete(_request())
    headers = {k.lower(): v for k, v in openai_server.requests[0].headers.items()}
    assert headers["authorization"] == "Bearer sk-loopback"


async def test_request_config_reaches_the_provider(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    await http_backend.complete(_request(config={"temperature": 0.25, "max_tokens": 77}))
    body = openai_server.requests[0].json
    assert body["temperature"] == 0.25
    # the OpenAI engine sends the newer name of the same limit
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 77


async def test_each_complete_makes_exactly_one_provider_call(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    for _ in range(3):
        await http_backend.complete(_request())
    assert openai_server.request_count == 3


async def test_rate_limit_with_retry_after_becomes_rate_limit_error(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(429, retry_after=2))
    with pytest.raises(RateLimitError) as info:
        await http_backend.complete(_request())
    assert info.value.retry_after == 2.0
    assert info.value.status == 429
    assert info.value.backend == "loopback"
    assert openai_server.request_count == 1


async def test_retry_after_as_an_http_date_is_read_as_seconds(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(status(429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT"))
    with pytest.raises(RateLimitError) as info:
        await http_backend.complete(_request())
    assert info.value.retry_after == 0.0  # a date in the past means "now"


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (500, BackendUnavailableError),
        (503, BackendUnavailableError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (400, BadRequestError),
    ],
)
async def test_http_status_becomes_the_matching_error_after_one_call(
    http_backend: DspyBackend, openai_server: OpenAIServer, code: int, error: type[Exception]
) -> None:
    openai_server.script(status(code))
    with pytest.raises(error) as info:
        await http_backend.complete(_request())
    assert getattr(info.value, "status", None) == code
    assert openai_server.request_count == 1


async def test_dropped_connection_becomes_a_connection_error(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(drop())
    with pytest.raises(BackendConnectionError):
        await http_backend.complete(_request())
    assert openai_server.request_count == 1


@pytest.mark.parametrize(
    "outcome",
    [malformed(), malformed(""), truncated()],
    ids=["html-behind-200", "empty-200", "json-cut-off"],
)
async def test_a_reply_that_is_not_json_is_a_retryable_malformed_response(
    http_backend: DspyBackend, openai_server: OpenAIServer, outcome: Outcome
) -> None:
    openai_server.script(outcome)
    with pytest.raises(MalformedResponseError) as info:
        await http_backend.complete(_request())
    error = info.value
    assert (error.code, error.status, error.backend) == (
        "backend_malformed_response",
        200,
        "loopback",
    )
    assert is_retryable(error)
    assert should_failover(error)
    assert openai_server.request_count == 1  # no repair attempt: the reply itself was unreadable


async def test_a_read_timeout_of_the_lm_is_a_timeout_not_a_connection_error(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    backend = DspyBackend(
        "loopback",
        model="openai/loopback-model",
        api_base=openai_server.base_url,
        api_key_env=KEY_ENV,
        lm_kwargs={"timeout": 0.2},
    )
    openai_server.script(delay(30))
    with pytest.raises(DspexTimeoutError) as info:
        await backend.complete(_request())
    assert type(info.value) is DspexTimeoutError
    assert info.value.code == "timeout"
    assert "read timed out" in info.value.message
    assert is_retryable(info.value)


async def test_slow_answer_past_the_timeout_raises_timeout_error(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(delay(30))
    with pytest.raises(DspexTimeoutError, match=r"within 0\.1s"):
        await http_backend.complete(_request(timeout=0.1))


async def test_backend_answers_again_after_a_timeout(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(delay(30))
    with pytest.raises(DspexTimeoutError):
        await http_backend.complete(_request(timeout=0.1))
    result = await http_backend.complete(_request(timeout=5))
    assert set(result.outputs) == {"answer", "score"}


async def test_unparseable_http_answer_gets_one_json_repair_attempt_then_parse_error(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    openai_server.script(ok("no fields here"), ok("still nothing"))
    with pytest.raises(ParseError):
        await http_backend.complete(_request())
    assert openai_server.request_count == 2


async def test_concurrent_calls_all_complete(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(http_backend.complete(_request())) for _ in range(5)]
    assert all(t.result().outputs["score"] == 1 for t in tasks)
    assert openai_server.request_count == 5


async def test_missing_api_key_is_an_authentication_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    backend = DspyBackend(model="openai/x", api_key_env=KEY_ENV)
    with pytest.raises(AuthenticationError, match=KEY_ENV):
        await backend.complete(_request())


async def test_health_reports_a_missing_api_key_as_unhealthy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    health = await DspyBackend(model="openai/x", api_key_env=KEY_ENV).health()
    assert health.status == "unhealthy"
    assert KEY_ENV in health.reason
    assert health.details["code"] == "backend_auth"


async def test_health_makes_no_provider_call(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    assert (await http_backend.health()).status == "healthy"
    assert openai_server.request_count == 0


async def test_built_lm_has_dspy_retries_and_cache_off(http_backend: DspyBackend) -> None:
    await http_backend.health()
    lm = http_backend._get_lm()
    assert lm.num_retries == 0
    assert lm.cache is False


async def test_aclose_releases_the_lm_and_a_later_call_rebuilds_it(
    http_backend: DspyBackend, openai_server: OpenAIServer
) -> None:
    await http_backend.complete(_request())
    first = http_backend._get_lm()
    await http_backend.aclose()
    await http_backend.complete(_request())
    assert http_backend._get_lm() is not first
    assert openai_server.request_count == 2


async def test_aclose_leaves_a_borrowed_lm_alone() -> None:
    lm = dspy.utils.DummyLM([])
    backend = DspyBackend(lm=lm)
    await backend.aclose()
    assert backend._get_lm() is lm


async def test_custom_adapter_is_used_for_the_call(openai_server: OpenAIServer) -> None:
    lm = dspy.LM(
        "openai/json-model",
        api_base=openai_server.base_url,
        api_key="k",
        num_retries=0,
        cache=False,
    )
    backend = DspyBackend(lm=lm, adapter=dspy.JSONAdapter())
    openai_server.script(ok('{"answer": "json", "score": 3}'))
    result = await backend.complete(_request())
    assert result.outputs == {"answer": "json", "score": 3}
    await lm.aclose()

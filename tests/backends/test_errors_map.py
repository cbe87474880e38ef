"""Provider, DSPy and transport exceptions translate into the dspex error tree, completely."""

from __future__ import annotations

import asyncio
import inspect
import json
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import dspy
import dspy.utils.exceptions as dspy_exceptions
import httpx
import litellm.exceptions
import openai
import pytest
from dspy import lm15
from tests.support import NEW_ERROR_CLASSES

from dspex.backends.errors_map import (
    parse_retry_after,
    resolve_rule,
    rule_for,
    translate,
)
from dspex.errors import (
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    ConfigError,
    ContextWindowError,
    DspexError,
    DspexTimeoutError,
    ExecutionCancelledError,
    MalformedResponseError,
    ParseError,
    QuotaExceededError,
    RateLimitError,
    is_retryable,
    should_failover,
)


def _exception_classes(module: ModuleType) -> list[type[BaseException]]:
    return sorted(
        {
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException)
            and not issubclass(cls, Warning)
            and cls.__module__.split(".")[0] in {"dspy", "litellm", "openai"}
        },
        key=lambda c: f"{c.__module__}.{c.__qualname__}",
    )


DSPY_CLASSES = [
    c for c in _exception_classes(dspy_exceptions) if issubclass(c, dspy_exceptions.DSPyError)
]
LITELLM_CLASSES = _exception_classes(litellm.exceptions)
LM15_CLASSES = _exception_classes(lm15)
OPENAI_CLASSES = [c for c in _exception_classes(openai) if not c.__name__.startswith("_")]


def _ids(classes: list[type[BaseException]]) -> list[str]:
    return [c.__name__ for c in classes]


ALL_CLASSES = DSPY_CLASSES + LITELLM_CLASSES + LM15_CLASSES + OPENAI_CLASSES


def _name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def inherited_rules(classes: list[type[BaseException]]) -> dict[str, str]:
    """Classes with no rule of their own, each with the known base class whose rule applies."""
    found: dict[str, str] = {}
    for cls in classes:
        resolved = resolve_rule(cls)
        if resolved is not None and resolved[0] is not cls:
            found[_name(cls)] = _name(resolved[0])
    return found


def test_every_provider_error_class_resolves_to_a_rule(
    request: pytest.FixtureRequest,
) -> None:
    unmapped = [_name(cls) for cls in ALL_CLASSES if resolve_rule(cls) is None]
    assert unmapped == [], f"no rule and no known base class: {unmapped}"
    # A class the installed packages added since the map was written maps through its nearest
    # known base; name them in the run's summary so the map can be given explicit rules.
    request.config.stash[NEW_ERROR_CLASSES] = inherited_rules(ALL_CLASSES)


def test_a_new_subclass_of_a_known_class_maps_through_its_base() -> None:
    new_class = type(
        "FutureQuotaRateLimitError",
        (litellm.exceptions.RateLimitError,),
        {"__module__": "litellm.exceptions"},
    )
    assert rule_for(new_class) is None
    assert resolve_rule(new_class) == (litellm.exceptions.RateLimitError, RateLimitError)
    assert inherited_rules([new_class]) == {
        "litellm.exceptions.FutureQuotaRateLimitError": "litellm.exceptions.RateLimitError"
    }
    exc = new_class("slow", llm_provider="openai", model="m", response=_response(429))
    assert isinstance(translate(exc, "b"), RateLimitError)


def test_a_new_class_with_no_known_base_resolves_to_nothing() -> None:
    orphan = type("BrandNewError", (Exception,), {"__module__": "litellm.exceptions"})
    assert resolve_rule(orphan) is None


def test_the_enumerations_found_the_families() -> None:
    # guards the completeness tests above against silently enumerating nothing
    assert len(DSPY_CLASSES) >= 20
    assert len(LITELLM_CLASSES) >= 30
    assert dspy_exceptions.AdapterParseError in DSPY_CLASSES
    assert litellm.exceptions.RateLimitError in LITELLM_CLASSES


def _dspy_error(cls: type[Exception], **kwargs: Any) -> Exception:
    if cls is dspy_exceptions.AdapterParseError:
        return cls("ChatAdapter", dspy.Signature("q -> a"), "garbage")
    if cls is dspy_exceptions.ContextWindowExceededError:
        return cls(model="m", **kwargs)
    return cls("failed", **kwargs)


DSPY_EXPECTED: dict[str, type[DspexError]] = {
    "DSPyError": BackendError,
    "LMError": BackendError,
    "LMTransportError": BackendConnectionError,
    "LMLockTimeoutError": DspexTimeoutError,
    "LMCollectionLimitError": BackendError,
    "LMConfigurationError": ConfigError,
    "LMNotConfiguredError": AuthenticationError,
    "LMUnsupportedFeatureError": BadRequestError,
    "LMProviderError": BackendError,
    "LMUnexpectedError": BackendError,
    "LMStreamAssemblyError": BackendUnavailableError,
    "LMAuthError": AuthenticationError,
    "LMBillingError": QuotaExceededError,
    "LMRateLimitError": RateLimitError,
    "LMInvalidRequestError": BadRequestError,
    "ContextWindowExceededError": ContextWindowError,
    "LMUnsupportedModelError": BadRequestError,
    "LMTimeoutError": DspexTimeoutError,
    "LMServerError": BackendUnavailableError,
    "AdapterParseError": ParseError,
}


@pytest.mark.parametrize("cls", DSPY_CLASSES, ids=_ids(DSPY_CLASSES))
def test_each_dspy_error_translates_to_its_dspex_class(cls: type[Exception]) -> None:
    translated = translate(_dspy_error(cls), "b")
    assert type(translated) is DSPY_EXPECTED[cls.__name__]


def test_dspy_rate_limit_keeps_status_and_retry_after() -> None:
    exc = dspy_exceptions.LMRateLimitError("slow", status=429, retry_after=2.5)
    translated = translate(exc, "primary")
    assert isinstance(translated, RateLimitError)
    assert (translated.status, translated.retry_after, translated.backend) == (429, 2.5, "primary")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (401, AuthenticationError),
        (403, AuthenticationError),
        (402, QuotaExceededError),
        (408, DspexTimeoutError),
        (429, RateLimitError),
        (400, BadRequestError),
        (404, BadRequestError),
        (500, BackendUnavailableError),
        (503, BackendUnavailableError),
    ],
)
def test_generic_provider_errors_are_refined_by_status(
    code: int, expected: type[DspexError]
) -> None:
    assert type(translate(dspy_exceptions.LMProviderError("x", status=code), "b")) is expected


def test_unexpected_dspy_error_uses_a_precise_cause() -> None:
    wrapper = dspy_exceptions.LMUnexpectedError("boom")
    wrapper.__cause__ = httpx.ConnectError("refused")
    assert isinstance(translate(wrapper, "b"), BackendConnectionError)


def test_unexpected_dspy_error_with_an_unknown_cause_stays_a_plain_backend_error() -> None:
    wrapper = dspy_exceptions.LMUnexpectedError("boom")
    wrapper.__cause__ = KeyError("x")
    translated = translate(wrapper, "b")
    assert type(translated) is BackendError
    assert not translated.retryable


def _response(code: int, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return httpx.Response(code, headers=headers or {}, request=request)


def test_litellm_rate_limit_reads_retry_after_from_the_response() -> None:
    exc = litellm.exceptions.RateLimitError(
        "slow down", llm_provider="openai", model="m", response=_response(429, {"Retry-After": "3"})
    )
    translated = translate(exc, "b")
    assert isinstance(translated, RateLimitError)
    assert translated.retry_after == 3.0
    assert translated.status == 429


def test_retry_after_ms_header_is_converted_to_seconds() -> None:
    exc = litellm.exceptions.RateLimitError(
        "slow",
        llm_provider="openai",
        model="m",
        response=_response(429, {"retry-after-ms": "1500"}),
    )
    assert translate(exc, "b").retry_after == 1.5  # type: ignore[attr-defined]


def test_litellm_context_window_error_is_a_context_window_error() -> None:
    exc = litellm.exceptions.ContextWindowExceededError(
        "too long", model="m", llm_provider="openai"
    )
    assert isinstance(translate(exc, "b"), ContextWindowError)


def test_litellm_timeout_is_a_timeout_error() -> None:
    exc = litellm.exceptions.Timeout("slow", model="m", llm_provider="openai")
    assert type(translate(exc, "b")) is DspexTimeoutError


def test_litellm_service_unavailable_is_retryable() -> None:
    exc = litellm.exceptions.ServiceUnavailableError("down", llm_provider="openai", model="m")
    translated = translate(exc, "b")
    assert isinstance(translated, BackendUnavailableError)
    assert translated.retryable


def test_openai_sdk_status_error_is_refined_by_status() -> None:
    exc = openai.APIStatusError("bad gateway", response=_response(502), body=None)
    assert isinstance(translate(exc, "b"), BackendUnavailableError)


def test_httpx_status_error_is_refined_by_the_response_status() -> None:
    exc = httpx.HTTPStatusError("429", request=_response(429).request, response=_response(429))
    assert isinstance(translate(exc, "b"), RateLimitError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("slow"), DspexTimeoutError),
        (httpx.ConnectError("refused"), BackendConnectionError),
        (TimeoutError(), DspexTimeoutError),
        (ConnectionResetError(), BackendConnectionError),
        (ValueError("bug"), BackendError),
    ],
)
def test_transport_and_builtin_errors_translate(
    exc: BaseException, expected: type[DspexError]
) -> None:
    assert type(translate(exc, "b")) is expected


def test_dspex_errors_pass_through_unchanged() -> None:
    exc = RateLimitError("x", retry_after=1)
    assert translate(exc, "b") is exc


def test_cancellation_becomes_a_cancelled_error() -> None:
    assert isinstance(translate(asyncio.CancelledError(), "b"), ExecutionCancelledError)


def test_non_backend_results_name_the_backend_in_the_message() -> None:
    translated = translate(TimeoutError("slow"), "primary")
    assert translated.message.startswith("primary: TimeoutError")


def test_long_provider_messages_are_truncated() -> None:
    translated = translate(dspy_exceptions.LMServerError("x" * 5000), "b")
    assert len(translated.message) < 1100


def test_retry_after_is_kept_as_the_provider_said_it() -> None:
    # how much of it is honoured is the retry policy's max_retry_after, the one cap
    exc = dspy_exceptions.LMRateLimitError("slow", status=429, retry_after=86400)
    assert translate(exc, "b").retry_after == 86400.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        (" 1.5 ", 1.5),
        (7, 7.0),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("9999", 9999.0),
        ("1e999", None),
        ("soon", None),
        ("nan", None),
        (None, None),
        (True, None),
    ],
)
def test_parse_retry_after_reads_seconds_and_http_dates(
    value: object, seconds: float | None
) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


# --- replies that cannot be read, and timeouts behind transport errors -------------------------


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` as it is when raised ``from inner`` (the cause chain a real raise leaves)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


def _decode_error(body: str) -> json.JSONDecodeError:
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError(f"{body!r} is JSON")


def _unreadable_reply(body: str, status: int = 200) -> BaseException:
    """What DSPy raises when the provider's reply is not JSON: lm15's ProviderError, wrapped."""
    provider = _raised_from(
        lm15.ProviderError("the reply is not JSON", status=status), _decode_error(body)
    )
    return _raised_from(dspy_exceptions.LMProviderError("failed", status=status), provider)


@pytest.mark.parametrize(
    "body",
    ["<html>502 Bad Gateway</html>", '{"id": "x", "choices": [{"mess', ""],
    ids=["html", "truncated", "empty"],
)
def test_a_reply_that_is_not_json_is_a_retryable_malformed_response(body: str) -> None:
    translated = translate(_unreadable_reply(body), "b")
    assert type(translated) is MalformedResponseError
    assert translated.code == "backend_malformed_response"
    assert translated.status == 200
    assert is_retryable(translated)
    assert should_failover(translated)


def test_an_unreadable_error_page_keeps_the_class_of_its_error_status() -> None:
    translated = translate(_unreadable_reply("<html>bad gateway</html>", status=502), "b")
    assert type(translated) is BackendUnavailableError


def test_a_generic_error_on_a_success_status_with_no_decode_cause_stays_final() -> None:
    translated = translate(dspy_exceptions.LMProviderError("odd", status=200), "b")
    assert type(translated) is BackendError
    assert not is_retryable(translated)


def test_a_decode_error_escaping_on_its_own_is_a_malformed_response() -> None:
    assert type(translate(_decode_error("<html>"), "b")) is MalformedResponseError


def test_openai_sdk_response_validation_error_is_a_malformed_response() -> None:
    exc = openai.APIResponseValidationError(response=_response(200), body="<html>")
    assert type(translate(exc, "b")) is MalformedResponseError


def test_litellm_post_call_rule_rejection_is_still_a_parse_error() -> None:
    exc = litellm.exceptions.APIResponseValidationError("rule said no", llm_provider="", model="m")
    assert type(translate(exc, "b")) is ParseError


@pytest.mark.parametrize(
    "exc",
    [
        # DSPy's transport error around lm15's, around the socket's timeout
        _raised_from(
            dspy_exceptions.LMTransportError("read timed out"),
            _raised_from(lm15.TransportError("read timed out"), TimeoutError()),
        ),
        httpx.ReadTimeout("read timed out"),
        _raised_from(
            litellm.exceptions.APIConnectionError("failed", llm_provider="openai", model="m"),
            httpx.ReadTimeout("read timed out"),
        ),
        _raised_from(
            openai.APIConnectionError(request=_response(200).request),
            httpx.ReadTimeout("read timed out"),
        ),
        litellm.exceptions.Timeout("slow", model="m", llm_provider="openai"),
    ],
    ids=["dspy-lm15", "httpx", "litellm-connection", "openai-connection", "litellm-timeout"],
)
def test_a_read_timeout_is_a_timeout_not_a_connection_error(exc: BaseException) -> None:
    translated = translate(exc, "b")
    assert type(translated) is DspexTimeoutError
    assert translated.code == "timeout"


def test_a_transport_error_from_a_reset_connection_stays_a_connection_error() -> None:
    exc = _raised_from(
        dspy_exceptions.LMTransportError("read failed"),
        _raised_from(lm15.TransportError("read failed"), ConnectionResetError()),
    )
    assert type(translate(exc, "b")) is BackendConnectionError

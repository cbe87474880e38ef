"""Translate provider, DSPy and transport exceptions into the dspex error tree.

This is the one place that knows the exception classes of DSPy (``dspy.utils.exceptions`` and
its vendored ``lm15`` engine), LiteLLM, the OpenAI SDK and httpx. Everything a backend raises
passes through :func:`translate`, so the rest of dspex sees only :class:`dspex.errors.DspexError`.

Classes are matched by name within their package family, walking the exception's MRO, so this
module imports none of those packages and a class a provider adds later maps through its nearest
known base class (:func:`resolve_rule`). A test enumerates every class of those packages and
checks that each one resolves to a rule, explicit or inherited, naming the inherited ones; a new
class with no known base fails it.

Generic classes (``APIError``, ``LMProviderError``, …) are refined by the HTTP status when the
exception carries an error status: 401/403 → :class:`AuthenticationError`, 402 →
:class:`QuotaExceededError`, 408 → :class:`DspexTimeoutError`, 429 → :class:`RateLimitError`,
other 4xx → :class:`BadRequestError`, 5xx → :class:`BackendUnavailableError`. ``Retry-After``
(seconds or an HTTP date; also ``retry-after-ms``) becomes ``retry_after`` as the provider said it
(not capped here: how much of it a retry honours is the retry policy's ``max_retry_after``, the
one cap, see :mod:`dspex.resilience.policy`).

Two refinements read the exception's cause chain (``__cause__``, else ``__context__``):

- a reply that could not be decoded (a ``JSONDecodeError`` or ``UnicodeDecodeError`` behind a
  generic error without an error status, or escaping on its own) is a
  :class:`MalformedResponseError`: an HTTP 200 whose body is a gateway's HTML page or JSON cut
  off halfway is a hiccup worth another attempt, not a permanent failure;
- a transport error caused by a timeout (lm15's or httpx's ``ReadTimeout`` inside DSPy's
  ``LMTransportError``, say) is a :class:`DspexTimeoutError`, not a connection error.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

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
)

__all__ = [
    "FAMILIES",
    "ByStatus",
    "parse_retry_after",
    "resolve_rule",
    "rule_for",
    "translate",
]

_MAX_MESSAGE = 1000


@dataclass(frozen=True, slots=True)
class ByStatus:
    """Rule for generic classes: decide by the HTTP status; use ``default`` when there is none."""

    default: type[DspexError] = BackendError


Rule = type[DspexError] | ByStatus

_GENERIC = ByStatus()

# DSPy's public LM error family (dspy/utils/exceptions.py).
_DSPY: Final[Mapping[str, Rule]] = {
    "DSPyError": _GENERIC,
    "LMError": _GENERIC,
    "LMTransportError": BackendConnectionError,
    # waiting for a local credential lock: transient, so a timeout (retryable)
    "LMLockTimeoutError": DspexTimeoutError,
    # a local collector hit its budget; DSPy says never retry it automatically
    "LMCollectionLimitError": BackendError,
    "LMConfigurationError": ConfigError,
    # missing key or provider settings for this backend: another backend may still work
    "LMNotConfiguredError": AuthenticationError,
    "LMUnsupportedFeatureError": BadRequestError,
    "LMProviderError": _GENERIC,
    "LMUnexpectedError": _GENERIC,
    # a broken stream is a provider/transport hiccup, worth another attempt
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

# DSPy's vendored engine (dspy.lm15); DSPy normally wraps these, custom engines may not.
_LM15: Final[Mapping[str, Rule]] = {
    "LM15Error": _GENERIC,
    "ProviderError": _GENERIC,
    "AuthError": AuthenticationError,
    "BillingError": QuotaExceededError,
    "RateLimitError": RateLimitError,
    "InvalidRequestError": BadRequestError,
    "ContextLengthError": ContextWindowError,
    "UnsupportedModelError": BadRequestError,
    "TimeoutError": DspexTimeoutError,
    "ServerError": BackendUnavailableError,
    "TransportError": BackendConnectionError,
    "LockTimeoutError": DspexTimeoutError,
    # lm15's transport layer (lm15.transports): timeouts are timeouts, the rest connection errors
    "ReadTimeout": DspexTimeoutError,
    "ConnectTimeout": DspexTimeoutError,
    "WriteTimeout": DspexTimeoutError,
    "StreamAssemblyError": BackendUnavailableError,
    "CollectionLimitError": BackendError,
    "CapabilityError": BadRequestError,
    "UnsupportedFeatureError": BadRequestError,
    "ConfigurationError": ConfigError,
    "AmbiguousModelError": ConfigError,
    "UnknownModelError": ConfigError,
    "ToolDerivationError": ConfigError,
    "NotConfiguredError": AuthenticationError,
    "MissingCredentialError": AuthenticationError,
}

# litellm.exceptions
_LITELLM: Final[Mapping[str, Rule]] = {
    "OpenAIError": _GENERIC,
    "APIError": _GENERIC,
    "MockException": _GENERIC,
    "APIConnectionError": BackendConnectionError,
    "Timeout": DspexTimeoutError,
    "APIResponseValidationError": ParseError,
    "JSONSchemaValidationError": ParseError,
    "AuthenticationError": AuthenticationError,
    "PermissionDeniedError": AuthenticationError,
    # the caller's own provider credential (passed through a proxy) was refused or throttled
    "CallerCredentialAuthenticationError": AuthenticationError,
    "CallerCredentialRateLimitError": RateLimitError,
    "RateLimitError": RateLimitError,
    "BadRequestError": BadRequestError,
    "InvalidRequestError": BadRequestError,
    "MalformedRequestFieldError": BadRequestError,
    "EndpointNotSupportedByModelError": BadRequestError,
    "UnsupportedEndpointError": BadRequestError,
    "UnprocessableEntityError": BadRequestError,
    "NotFoundError": BadRequestError,
    "ContentPolicyViolationError": BadRequestError,
    "ImageFetchError": BadRequestError,
    "UnsupportedParamsError": BadRequestError,
    "RejectedRequestError": BadRequestError,
    "VectorStoreSearchError": BadRequestError,
    # guardrails refused the request: the same input would be refused again
    "BlockedPiiEntityError": BadRequestError,
    "GuardrailRaisedException": BadRequestError,
    "SensitiveDataRouteException": BadRequestError,
    "ModifyResponseException": BadRequestError,
    "ContextWindowExceededError": ContextWindowError,
    "PaymentRequiredError": QuotaExceededError,
    "BudgetExceededError": QuotaExceededError,
    "LiteLLMUnknownProvider": ConfigError,
    "ModelNotMappedError": ConfigError,
    "InternalServerError": BackendUnavailableError,
    "ServiceUnavailableError": BackendUnavailableError,
    "BadGatewayError": BackendUnavailableError,
    "MidStreamFallbackError": BackendUnavailableError,
}

# the OpenAI SDK (the base of LiteLLM's classes, and used directly by some engines)
_OPENAI: Final[Mapping[str, Rule]] = {
    "OpenAIError": _GENERIC,
    "APIError": _GENERIC,
    "APIStatusError": _GENERIC,
    "APIConnectionError": BackendConnectionError,
    "APITimeoutError": DspexTimeoutError,
    # the reply's body was not the JSON the SDK expected (not the model's answer)
    "APIResponseValidationError": MalformedResponseError,
    "AuthenticationError": AuthenticationError,
    "PermissionDeniedError": AuthenticationError,
    "OAuthError": AuthenticationError,
    "RateLimitError": RateLimitError,
    "BadRequestError": BadRequestError,
    "NotFoundError": BadRequestError,
    "ConflictError": BadRequestError,
    "UnprocessableEntityError": BadRequestError,
    "InternalServerError": BackendUnavailableError,
    "LengthFinishReasonError": ParseError,
    "ContentFilterFinishReasonError": ParseError,
    "WebSocketConnectionClosedError": BackendConnectionError,
    "WebSocketQueueFullError": BackendUnavailableError,
    "InvalidWebhookSignatureError": BadRequestError,
}

# httpx (raw transport errors that escape an engine)
_HTTPX: Final[Mapping[str, Rule]] = {
    "HTTPError": _GENERIC,
    "HTTPStatusError": _GENERIC,
    "TimeoutException": DspexTimeoutError,
    "TransportError": BackendConnectionError,
}

FAMILIES: Final[tuple[tuple[str, Mapping[str, Rule]], ...]] = (
    ("dspy.utils.exceptions", _DSPY),
    ("dspy._vendor.lm15", _LM15),
    ("litellm", _LITELLM),
    ("openai", _OPENAI),
    ("httpx", _HTTPX),
)
"""``(module prefix, {class name: rule})`` for each package whose errors are translated."""


def _in_package(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def rule_for(cls: type[BaseException]) -> Rule | None:
    """The rule written for exactly this class (not inherited), or ``None``."""
    for prefix, table in FAMILIES:
        if _in_package(cls.__module__, prefix) and cls.__name__ in table:
            return table[cls.__name__]
    return None


def resolve_rule(cls: type[BaseException]) -> tuple[type[BaseException], Rule] | None:
    """The rule that applies to ``cls``: its own, else its nearest known base class's.

    Returns:
        ``(the class whose rule applies, the rule)``, or ``None`` when neither ``cls`` nor any
        of its bases in the translated package families has a rule.
    """
    for klass in cls.__mro__:
        rule = rule_for(klass)
        if rule is not None:
            return klass, rule
    return None


def _resolve_rule(cls: type[BaseException]) -> Rule | None:
    found = resolve_rule(cls)
    return None if found is None else found[1]


def _by_status(status: int) -> type[DspexError]:
    if status in (401, 403):
        return AuthenticationError
    if status == 402:
        return QuotaExceededError
    if status == 408:
        return DspexTimeoutError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return BackendUnavailableError
    if status >= 400:
        return BadRequestError
    return BackendError


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    for value in (
        getattr(exc, "status", None),
        getattr(exc, "status_code", None),
        getattr(response, "status_code", None),
    ):
        if isinstance(value, str) and value.isdecimal():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
            return value
    return None


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    try:
        items = headers.items() if hasattr(headers, "items") else headers
        for key, value in items:
            if str(key).lower() == name:
                return str(value)
    except (TypeError, ValueError):
        return None
    return None


def parse_retry_after(value: object, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: a number of seconds or an HTTP date.

    Args:
        value: the header value (``"2"``, ``"1.5"``, ``"Wed, 21 Oct 2015 07:28:00 GMT"``) or a
            number.
        now: the current time, for HTTP dates (default: the wall clock).

    Returns:
        Seconds, at least 0 (a date in the past is 0), or ``None`` when the value is missing or
        unreadable.
    """
    if value is None or isinstance(value, bool):
        return None
    seconds: float | None = None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _retry_after_of(exc: BaseException) -> float | None:
    direct = parse_retry_after(getattr(exc, "retry_after", None))
    if direct is not None:
        return direct
    response = getattr(exc, "response", None)
    for headers in (getattr(response, "headers", None), getattr(exc, "headers", None)):
        millis = _header(headers, "retry-after-ms")
        if millis is not None:
            parsed = parse_retry_after(millis)
            if parsed is not None:
                return parsed / 1000
        seconds = parse_retry_after(_header(headers, "retry-after"))
        if seconds is not None:
            return seconds
    return None


def _message(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip() or type(exc).__name__
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    return f"{type(exc).__name__}: {text}"


def _build(
    target: type[DspexError],
    exc: BaseException,
    backend: str,
    status: int | None,
    retry_after: float | None,
) -> DspexError:
    message = _message(exc)
    if issubclass(target, BackendError):
        return target(message, status=status, retry_after=retry_after, backend=backend)
    return target(f"{backend}: {message}")


def translate(exc: BaseException, backend: str) -> DspexError:
    """The dspex error for ``exc``, raised by (or on the way to) backend ``backend``.

    dspex errors pass through unchanged. The caller raises the result ``from exc`` so the
    original stays visible as the cause.

    Args:
        exc: the exception a provider, DSPy or the transport raised.
        backend: the name of the backend, recorded on the error.

    Returns:
        A :class:`DspexError` subclass instance (never raises).
    """
    if isinstance(exc, DspexError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return ExecutionCancelledError(f"{backend}: the call was cancelled")
    status = _status_of(exc)
    retry_after = _retry_after_of(exc)
    rule = _resolve_rule(type(exc))
    if rule is None:
        rule = _builtin_rule(exc)
    if rule is BackendConnectionError and _caused_by_timeout(exc):
        return _build(DspexTimeoutError, exc, backend, status, retry_after)
    if isinstance(rule, ByStatus):
        if status is not None and status >= 400:
            return _build(_by_status(status), exc, backend, status, retry_after)
        if _undecodable(exc):
            # an "error" on a successful status: the reply itself could not be read
            return _build(MalformedResponseError, exc, backend, status, retry_after)
        cause = _cause(exc)
        # a generic wrapper (LMUnexpectedError, APIError) often hides a precise cause
        if cause is not None and cause is not exc and _resolve_rule(type(cause)) is not None:
            from_cause = translate(cause, backend)
            if type(from_cause) is not BackendError:
                return from_cause
        return _build(rule.default, exc, backend, status, retry_after)
    return _build(rule, exc, backend, status, retry_after)


def _builtin_rule(exc: BaseException) -> Rule:
    if isinstance(exc, TimeoutError):
        return DspexTimeoutError
    if isinstance(exc, ConnectionError):
        return BackendConnectionError
    if isinstance(exc, _DECODE_ERRORS):
        return MalformedResponseError
    return _GENERIC


_DECODE_ERRORS = (json.JSONDecodeError, UnicodeDecodeError)
_MAX_CHAIN = 16  # links of a cause chain looked at (chains are short; cycles are cut)


def _cause(exc: BaseException) -> BaseException | None:
    """What ``exc`` was raised from: its explicit cause, else the exception it interrupted."""
    if exc.__cause__ is not None:
        return exc.__cause__
    return None if exc.__suppress_context__ else exc.__context__


def _chain(exc: BaseException) -> list[BaseException]:
    """The exceptions behind ``exc`` (not ``exc`` itself), nearest first."""
    found: list[BaseException] = []
    current = _cause(exc)
    while current is not None and current is not exc and len(found) < _MAX_CHAIN:
        if any(current is seen for seen in found):
            break
        found.append(current)
        current = _cause(current)
    return found


def _undecodable(exc: BaseException) -> bool:
    """Whether a reply that could not be decoded is behind ``exc``."""
    return any(isinstance(link, _DECODE_ERRORS) for link in _chain(exc))


def _caused_by_timeout(exc: BaseException) -> bool:
    """Whether a timeout is behind the transport error ``exc``."""
    return any(
        isinstance(link, TimeoutError) or _resolve_rule(type(link)) is DspexTimeoutError
        for link in _chain(exc)
    )

"""The classification table: retry here, fail over, trip the breaker — one row per error.

And the one error whose retryability depends on the instance: a coordinator group's
``AllBackendsFailedError`` is retryable exactly when every cause was.
"""

from __future__ import annotations

import asyncio

import pytest

from dspex.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendConnectionError,
    BackendError,
    BackendUnavailableError,
    BadRequestError,
    CircuitOpenError,
    ConfigError,
    ContextWindowError,
    DeadlineExceeded,
    DspexTimeoutError,
    ExecutionCancelledError,
    FailedAttempt,
    MalformedResponseError,
    ParseError,
    QuotaExceededError,
    RateLimitError,
    ValidationError,
)
from dspex.resilience import Classification, classify

TABLE: list[tuple[BaseException, Classification]] = [
    (RateLimitError("429", retry_after=2), Classification(True, True, True)),
    (BackendUnavailableError("503"), Classification(True, True, True)),
    (BackendConnectionError("reset"), Classification(True, True, True)),
    (DspexTimeoutError("slow"), Classification(True, True, True)),
    (MalformedResponseError("body is not JSON", status=200), Classification(True, True, True)),
    (TimeoutError(), Classification(True, True, True)),
    (ConnectionError(), Classification(True, True, True)),
    (AuthenticationError("401"), Classification(False, True, True)),
    (QuotaExceededError("402"), Classification(False, True, True)),
    (BadRequestError("400"), Classification(False, False, False)),
    (ContextWindowError("too long"), Classification(False, False, False)),
    (ParseError("no fields"), Classification(False, False, False)),
    (ValidationError("bad input"), Classification(False, False, False)),
    (DeadlineExceeded("spent"), Classification(False, False, False)),
    (ExecutionCancelledError("stopped"), Classification(False, False, False)),
    (asyncio.CancelledError(), Classification(False, False, False)),
    (CircuitOpenError("open"), Classification(False, True, False)),
    (ConfigError("bad config"), Classification(False, False, False)),
    (BackendError("unknown provider failure"), Classification(False, False, True)),
    (BackendError("flagged retryable", retryable=True), Classification(True, True, True)),
    (RuntimeError("bug in a backend"), Classification(False, False, True)),
]


@pytest.mark.parametrize(
    ("error", "expected"), TABLE, ids=[f"{type(e).__name__}-{i}" for i, (e, _) in enumerate(TABLE)]
)
def test_classification_table(error: BaseException, expected: Classification) -> None:
    assert classify(error) == expected


def _group_error(*attempts: FailedAttempt) -> AllBackendsFailedError:
    return AllBackendsFailedError("every backend failed", attempts)


RATE_LIMITED = FailedAttempt("a", "rate_limited", "429")
UNAVAILABLE = FailedAttempt("b", "backend_unavailable", "503")
TIMED_OUT = FailedAttempt("a", "timeout", "no answer")
MALFORMED = FailedAttempt("b", "backend_malformed_response", "not JSON")
AUTH = FailedAttempt("b", "backend_auth", "401")
OPEN = FailedAttempt("c", "circuit_open", "circuit open")


def test_a_group_failure_whose_every_cause_was_retryable_is_retryable() -> None:
    error = _group_error(RATE_LIMITED, UNAVAILABLE, TIMED_OUT, MALFORMED)
    assert error.retryable
    assert classify(error) == Classification(True, True, False)


@pytest.mark.parametrize(
    "final",
    [
        AUTH,
        FailedAttempt("a", "backend_bad_request", "400"),
        FailedAttempt("a", "backend_error", "?"),
    ],
    ids=["auth", "bad-request", "unknown-backend-error"],
)
def test_a_group_failure_with_one_final_cause_is_not_retryable(final: FailedAttempt) -> None:
    error = _group_error(RATE_LIMITED, final, UNAVAILABLE)
    assert not error.retryable
    assert classify(error) == Classification(False, False, False)


def test_an_attempt_says_itself_whether_it_was_retryable() -> None:
    # a backend error flagged retryable on the instance, whatever its code's class says
    assert _group_error(FailedAttempt("a", "backend_error", "flagged", retryable=True)).retryable
    assert not _group_error(FailedAttempt("a", "rate_limited", "no", retryable=False)).retryable


def test_a_skipped_open_circuit_is_no_cause_either_way() -> None:
    assert _group_error(UNAVAILABLE, OPEN).retryable
    assert not _group_error(AUTH, OPEN).retryable


def test_a_group_that_asked_no_backend_is_not_retryable() -> None:
    assert not _group_error(OPEN, FailedAttempt("d", "circuit_open", "circuit open")).retryable
    assert not _group_error().retryable


def test_the_class_default_stays_final_so_the_code_alone_never_says_retryable() -> None:
    assert AllBackendsFailedError.retryable is False

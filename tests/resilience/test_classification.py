"""The classification table: retry here, fail over, trip the breaker — one row per error."""

from __future__ import annotations

import asyncio

import pytest

from dspex.errors import (
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

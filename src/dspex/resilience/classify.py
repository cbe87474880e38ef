"""How a failed attempt is judged, in one place, on top of :mod:`dspex.errors`.

:func:`dspex.errors.is_retryable` (may the same backend succeed if asked again) and
:func:`dspex.errors.should_failover` (may another backend succeed) are the tree's own decisions;
this module adds the one the breakers need: :func:`trips_breaker` (does the failure say something
about the backend's health). :func:`classify` bundles the three for the coordinator and the tests.

========================  =========  ========  ============
error                     retryable  failover  trips breaker
========================  =========  ========  ============
rate limit (429)          yes        yes       yes
unavailable (5xx)         yes        yes       yes
connection                yes        yes       yes
malformed reply           yes        yes       yes
timeout (one attempt)     yes        yes       yes
auth / quota              no         yes       yes
bad request / context     no         no        no
parse (after repair)      no         no        no
validation                no         no        no
deadline exceeded         no         no        no
cancelled                 no         no        no
other backend error       no         no        yes
========================  =========  ========  ============

A bad request, a parse failure or a validation error is the caller's input or the model's answer,
not the backend's health; a deadline cut the attempt short on our side; a cancellation was ours.
None of them may open a circuit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dspex.errors import (
    BackendError,
    BadRequestError,
    DeadlineExceeded,
    DspexError,
    DspexTimeoutError,
    ExecutionCancelledError,
    ParseError,
    ValidationError,
    is_retryable,
    should_failover,
)

__all__ = ["Classification", "classify", "trips_breaker"]


@dataclass(frozen=True, slots=True)
class Classification:
    """What a failure means for the call: retry here, go elsewhere, count against the backend."""

    retryable: bool
    failover: bool
    trips_breaker: bool


def trips_breaker(exc: BaseException) -> bool:
    """Whether ``exc`` counts as a failure of the backend in its circuit breaker."""
    if isinstance(
        exc,
        BadRequestError
        | ParseError
        | ValidationError
        | DeadlineExceeded
        | ExecutionCancelledError
        | asyncio.CancelledError,
    ):
        return False
    if isinstance(exc, BackendError | DspexTimeoutError):
        return True
    if isinstance(exc, DspexError):
        return False  # not a backend failure (a config or program problem)
    # Backends translate provider errors; anything else escaping one is the backend's own fault.
    return isinstance(exc, Exception)


def classify(exc: BaseException) -> Classification:
    """The three decisions for one failure."""
    return Classification(is_retryable(exc), should_failover(exc), trips_breaker(exc))

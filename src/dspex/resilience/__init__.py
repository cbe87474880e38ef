"""Resilience: retry policy, circuit breakers and the coordinator of backend groups.

See DESIGN §3.6 and §4. :class:`RetryPolicy` is the one retry policy (program specs, ``dspex.toml``,
coordinators and batches) and builds the one retry loop; :mod:`dspex.resilience.policy` says how
module, group and batch item retries compose (:func:`calls_bound`). A :class:`Coordinator` is a
:class:`~dspex.backends.base.Backend` made of backends: one retry loop across them, a breaker per
backend, a strategy and a deadline.
"""

from __future__ import annotations

from dspex.backends.base import BackendAttempt
from dspex.resilience.breaker import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    BreakerStateStore,
    BreakerStatus,
    CircuitBreaker,
    MemoryBreakerStore,
    StoreBreakerStore,
)
from dspex.resilience.classify import Classification, classify, trips_breaker
from dspex.resilience.config import (
    CoordinatorConfig,
    build_breakers,
    build_coordinator,
    build_coordinators,
)
from dspex.resilience.coordinator import AttemptCallback, Coordinator, Strategy
from dspex.resilience.policy import Clock, LoopClock, RetryPolicy, calls_bound

__all__ = [
    "AttemptCallback",
    "BackendAttempt",
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStateStore",
    "BreakerStatus",
    "CircuitBreaker",
    "Classification",
    "Clock",
    "Coordinator",
    "CoordinatorConfig",
    "LoopClock",
    "MemoryBreakerStore",
    "RetryPolicy",
    "StoreBreakerStore",
    "Strategy",
    "build_breakers",
    "build_coordinator",
    "build_coordinators",
    "calls_bound",
    "classify",
    "trips_breaker",
]

"""Resilience: retry policy, circuit breakers and the coordinator of backend groups.

See DESIGN §3.6 and §4. A :class:`Coordinator` is a :class:`~dspex.backends.base.Backend` made of
backends: one retry loop across them, a breaker per backend, a strategy and a deadline.
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
from dspex.resilience.policy import Clock, LoopClock, RetryPolicy

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
    "classify",
    "trips_breaker",
]

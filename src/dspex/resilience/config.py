"""Coordinator groups from configuration (``dspex.toml``).

Example::

    [breaker]                       # every backend's circuit breaker
    failure_rate_threshold = 0.5
    minimum_calls = 10
    window_size = 20
    open_seconds = 30

    [coordinators.main]
    backends = ["openai", "local"]  # names of [backends.*] entries, in priority order
    strategy = "failover"           # or "round_robin", "least_latency"
    context_window_fallback = ["big"]  # where a call too long for a member goes (optional)

    [coordinators.main.retry]       # a RetryPolicy: backend attempts across the group
    max_attempts = 4
    initial_interval = 0.5
    backoff_factor = 2.0
    max_interval = 10
    jitter = 0.2
    deadline = 60
    max_retry_after = 60

A module or a program names a group (``backend: main``) exactly as it names a backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from dspex.backends.base import Backend
from dspex.errors import ConfigError
from dspex.resilience.breaker import BreakerConfig, BreakerRegistry, BreakerStateStore
from dspex.resilience.coordinator import AttemptCallback, Coordinator, Strategy
from dspex.resilience.policy import Clock, RetryPolicy, problems_of

__all__ = ["CoordinatorConfig", "build_breakers", "build_coordinator", "build_coordinators"]


class CoordinatorConfig(BaseModel):
    """One ``[coordinators.NAME]`` table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: list[str] = Field(min_length=1)
    strategy: Strategy = "failover"
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    context_window_fallback: list[str] = Field(default_factory=list)


def _section(settings: Mapping[str, Any] | Any, key: str) -> Any:
    value = settings.get(key) if isinstance(settings, Mapping) else getattr(settings, key, None)
    return _plain(value)


def _plain(value: Any) -> Any:
    """Validated settings (pydantic models, as :class:`dspex.config.Settings` holds them) as
    plain tables; only the keys that were set, so unset ones keep this layer's defaults."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def build_breakers(
    settings: Mapping[str, Any] | Any, *, store: BreakerStateStore | None = None
) -> BreakerRegistry:
    """The breaker registry from the ``[breaker]`` table (defaults when absent).

    Raises:
        ConfigError: an unknown key or a value out of range.
    """
    table = _section(settings, "breaker") or {}
    if not isinstance(table, Mapping):
        raise ConfigError("[breaker] must be a table")
    try:
        config = BreakerConfig(**dict(table))
    except TypeError as exc:
        raise ConfigError(f"[breaker]: {exc}") from exc
    return BreakerRegistry(config, store=store)


def build_coordinator(
    name: str,
    table: Mapping[str, Any],
    backends_by_name: Mapping[str, Backend],
    *,
    breakers: BreakerRegistry | None = None,
    clock: Clock | None = None,
    on_attempt: AttemptCallback | None = None,
) -> Coordinator:
    """One coordinator group from its ``[coordinators.NAME]`` table.

    The group does not own its backends (the runtime that built them closes them).

    Raises:
        ConfigError: the table is malformed or names a backend that does not exist.
    """
    try:
        config = CoordinatorConfig.model_validate(dict(table))
    except PydanticValidationError as exc:
        raise ConfigError(f"[coordinators.{name}]: {problems_of(exc)}") from exc
    named = dict.fromkeys((*config.backends, *config.context_window_fallback))
    missing = [b for b in named if b not in backends_by_name]
    if missing:
        known = ", ".join(sorted(backends_by_name)) or "none"
        raise ConfigError(
            f"[coordinators.{name}]: unknown backend(s) {', '.join(missing)} (known: {known})"
        )
    return Coordinator(
        name,
        [backends_by_name[b] for b in config.backends],
        strategy=config.strategy,
        policy=config.retry,
        breakers=breakers,
        clock=clock,
        on_attempt=on_attempt,
        owns_backends=False,
        context_window_fallback=[backends_by_name[b] for b in config.context_window_fallback],
    )


def build_coordinators(
    settings: Mapping[str, Any] | Any,
    backends_by_name: Mapping[str, Backend],
    *,
    breakers: BreakerRegistry | None = None,
    breaker_store: BreakerStateStore | None = None,
    clock: Clock | None = None,
    on_attempt: AttemptCallback | None = None,
) -> dict[str, Coordinator]:
    """Every group in ``settings["coordinators"]``, sharing one breaker registry.

    ``settings`` is the parsed configuration: a mapping, or an object with ``coordinators`` and
    ``breaker`` attributes such as :class:`dspex.config.Settings`. A group may not take the name
    of a backend.

    Raises:
        ConfigError: a malformed table, an unknown backend, or a name clash.
    """
    tables = _section(settings, "coordinators") or {}
    if not isinstance(tables, Mapping):
        raise ConfigError("[coordinators] must be a table of groups")
    registry = breakers or build_breakers(settings, store=breaker_store)
    groups: dict[str, Coordinator] = {}
    for name, table in tables.items():
        if name in backends_by_name:
            raise ConfigError(f"[coordinators.{name}]: a backend is already named {name!r}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"[coordinators.{name}] must be a table")
        groups[name] = build_coordinator(
            name, table, backends_by_name, breakers=registry, clock=clock, on_attempt=on_attempt
        )
    return groups

"""The strategies, each list written once (stdlib only, so the CLI can import it at no cost).

Two different things are called a strategy, and each has one definition here that the spec,
the settings, the runtime, the CLI and the service all use:

- :data:`Strategy`: how a program's graph runs (DESIGN §5): ``sequential``; ``parallel`` (level by
  level, with a barrier); ``optimized`` (the default: a module starts as soon as its own
  dependencies finish); ``resource_aware`` (optimized plus admission by the resource manager).
  Public as ``dspex.Strategy``.
- :data:`CoordinatorStrategy`: how a coordinator orders its backends for a call (DESIGN §3.6):
  ``failover``, ``round_robin`` or ``least_latency``.

And one list that is not a strategy but is named the same way everywhere: :data:`CacheMode`,
how a module call uses the response cache (``off``, ``read_only``, ``read_write``).
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "CACHE_MODES",
    "COORDINATOR_STRATEGIES",
    "PRIORITISED_STRATEGIES",
    "STRATEGIES",
    "CacheMode",
    "CoordinatorStrategy",
    "Strategy",
]

Strategy = Literal["sequential", "parallel", "optimized", "resource_aware"]
"""How a program's graph runs."""

STRATEGIES: tuple[Strategy, ...] = get_args(Strategy)
"""Every :data:`Strategy`, in the order the docs list them."""

PRIORITISED_STRATEGIES: tuple[Strategy, ...] = ("optimized", "resource_aware")
"""The strategies that start the ready module with the longest remaining path first."""

CoordinatorStrategy = Literal["failover", "round_robin", "least_latency"]
"""How a coordinator orders its backends for a call."""

COORDINATOR_STRATEGIES: tuple[CoordinatorStrategy, ...] = get_args(CoordinatorStrategy)
"""Every :data:`CoordinatorStrategy`."""

CacheMode = Literal["off", "read_only", "read_write"]
"""How a module call uses the response cache: not at all, answers from it without storing, or
answers from it and stores what it validated."""

CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)
"""Every :data:`CacheMode`."""

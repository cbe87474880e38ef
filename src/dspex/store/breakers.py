"""The :class:`BreakerStore` interface: circuit-breaker states shared by every process.

Implemented by :mod:`dspex.store._memory_breakers` and :mod:`dspex.store._sql_breakers`; its
share of the contract suite is ``tests/store/test_contract_breakers.py``.
"""

from __future__ import annotations

import abc

from dspex.records import BreakerRecord

__all__ = ["BreakerStore"]


class BreakerStore(abc.ABC):
    """One circuit-breaker state per backend name (the ``breakers`` table)."""

    @abc.abstractmethod
    async def save_breaker(self, record: BreakerRecord) -> None:
        """Store (or replace) one backend's circuit-breaker state (``updated_at`` is now)."""

    @abc.abstractmethod
    async def list_breakers(self) -> list[BreakerRecord]:
        """Every stored circuit-breaker state, by backend name."""

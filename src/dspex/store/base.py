"""The :class:`Store`: everything dspex persists, as the union of eight narrow interfaces.

Each noun has its own abstract interface, its own in-memory and SQL implementation module and
its own share of the contract suite:

- :class:`~dspex.store.programs.ProgramStore`: program versions, their lifecycle and promotions;
- :class:`~dspex.store.executions.ExecutionStore`: one execution, its lease, steps and attempts;
- :class:`~dspex.store.batches.BatchStore`: batches, and the group writes that run their items;
- :class:`~dspex.store.breakers.BreakerStore`: circuit-breaker states;
- :class:`~dspex.store.cache.CacheStore`: the response cache;
- :class:`~dspex.store.evaluations.EvaluationStore`: evaluations and their item scores;
- :class:`~dspex.store.maintenance.MaintenanceStore`: the database's health, and cleanup;
- :class:`~dspex.store.optimizations.OptimizationStore`: optimization runs and their trials.

A :class:`Store` is one object that is all eight (plus its lifecycle and id lookup), so callers
pass one thing around; code that needs one noun only can name the narrower interface.

Two implementations honour it: :class:`dspex.store.memory.MemoryStore` (the in-memory twin used
by unit tests) and :class:`dspex.store.sql.SqlStore` (SQLite and PostgreSQL through SQLAlchemy).
One contract test suite runs against both, so the twin cannot drift from the real thing.

Rules every implementation keeps:

- Lookups of a missing thing raise :class:`dspex.errors.NotFoundError`.
- Every write to an execution after it was claimed is conditional on its lease token; a worker
  that lost its lease gets :class:`dspex.errors.LeaseLostError` and changes nothing.
- Counters are incremented atomically; concurrent bumps never lose a count.
- Each method is one short transaction, so a failure record is never rolled back with the work
  that failed.
- Any other database failure surfaces as :class:`dspex.errors.StorageError`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Literal, Self

from dspex.records import utc_now
from dspex.store.batches import BatchStore
from dspex.store.breakers import BreakerStore
from dspex.store.cache import CacheStore
from dspex.store.evaluations import EvaluationStore
from dspex.store.executions import ExecutionStore
from dspex.store.maintenance import MaintenanceStore
from dspex.store.optimizations import OptimizationStore
from dspex.store.programs import ProgramStore

__all__ = [
    "BatchStore",
    "BreakerStore",
    "CacheStore",
    "Clock",
    "EvaluationStore",
    "ExecutionStore",
    "IdKind",
    "MaintenanceStore",
    "OptimizationStore",
    "ProgramStore",
    "Store",
]

Clock = Callable[[], datetime]

IdKind = Literal["execution", "batch"]
"""What :meth:`Store.match_ids` looks up: execution ids or batch ids."""


class Store(
    ProgramStore,
    ExecutionStore,
    BatchStore,
    BreakerStore,
    CacheStore,
    EvaluationStore,
    MaintenanceStore,
    OptimizationStore,
):
    """Persistence for programs, executions (with steps and attempts), batches and breakers.

    Use it as an async context manager (``initialize`` on enter, ``close`` on exit) or call the
    two yourself. ``clock`` returns the current UTC time; tests inject one to move leases forward
    without sleeping.
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self.clock = clock

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where the data lives, safe to print (passwords masked)."""

    @abc.abstractmethod
    async def initialize(self) -> None:
        """Make the store ready: bring the schema to the newest revision where allowed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    @abc.abstractmethod
    async def match_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> list[str]:
        """The ids of ``kind`` that start with ``prefix`` (case-sensitive), in id order.

        How a short id is found, as ``git`` finds an object by the start of its hash: one match
        is the record, several are the candidates to show. A full id matches itself. (It spans
        two nouns, executions and batches, so it belongs to the store as a whole.)

        Raises:
            ValidationError: an empty prefix or a ``limit`` below 1.
        """

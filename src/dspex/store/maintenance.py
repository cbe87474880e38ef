"""The :class:`MaintenanceStore` interface: the database's own health, and cleanup.

Implemented by :mod:`dspex.store._memory_maintenance` and :mod:`dspex.store._sql_maintenance`.
The reaper's rules and the records these methods return live in :mod:`dspex.store._maintenance`,
once for both. Its share of the contract suite is ``tests/store/test_contract_maintenance.py``
(and the cleanup suite in ``tests/cleanup``).
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Mapping
from datetime import datetime

from dspex.store import _maintenance as _m

__all__ = ["MaintenanceStore"]


class MaintenanceStore(abc.ABC):
    """What ``health`` reads and ``cleanup`` repairs, across every table."""

    # -- health --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def ping(self) -> float:
        """Round-trip a trivial query; returns the latency in milliseconds."""

    @abc.abstractmethod
    async def schema_revision(self) -> str | None:
        """The schema revision the database is at (``None`` for an empty database)."""

    @abc.abstractmethod
    async def is_current(self) -> bool:
        """Whether the schema is at the newest revision this code knows."""

    @abc.abstractmethod
    async def probe_tables(self) -> dict[str, str | None]:
        """Read one row of every table: ``{table: None}`` when readable, else the error text."""

    @abc.abstractmethod
    async def open_executions(self, now: datetime | None = None) -> _m.OpenExecutions:
        """How many executions are pending, running, and running with a lease expired at ``now``."""

    @abc.abstractmethod
    async def execution_summaries(
        self, since: datetime, *, limit: int = 50_000
    ) -> list[_m.ExecutionSample]:
        """Executions created at or after ``since`` (newest first, at most ``limit``)."""

    # -- cleanup -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def reap_expired_leases(
        self,
        now: datetime | None = None,
        *,
        attempt_cap: int = 3,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> _m.ReapResult:
        """Re-queue or fail up to ``limit`` running executions whose lease expired before ``now``.

        A batch item below ``attempt_cap`` attempts goes back to ``pending`` with its lease
        cleared (its next claim counts the next attempt); any other one is failed with code
        ``lease_expired``, counted on its program version and its batch. One transaction that
        locks what it changes (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
        SQLite), so concurrent reapers never act twice on one execution. A dry run classifies
        every expired execution (no ``limit``) and changes nothing.
        """

    @abc.abstractmethod
    async def finalize_batches(
        self,
        *,
        dry_run: bool = False,
        limit: int = 1000,
        assume_failed: Mapping[str, int] | None = None,
    ) -> list[_m.BatchFinalization]:
        """Finish open batches whose every item exists and is terminal (counts recomputed).

        ``assume_failed`` (dry runs: ``{batch_id: n}``) counts ``n`` running items of a batch as
        failed, as a real cleanup's reaper pass would have left them.
        """

    @abc.abstractmethod
    async def fail_stuck_programs(
        self, updated_before: datetime, *, dry_run: bool = False
    ) -> list[tuple[str, int]]:
        """Move versions stuck ``initializing`` since before ``updated_before`` to ``error``."""

    @abc.abstractmethod
    async def delete_executions(
        self,
        created_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        """Delete up to ``limit`` terminal executions created (and finished) before a time.

        Their steps and attempts go with them, in one short transaction; call again until the
        count is below ``limit``. A dry run counts every one that qualifies and deletes nothing.

        Returns:
            How many were (or would be) deleted, and up to ``sample`` of their ids.
        """

    @abc.abstractmethod
    async def stalled_batches(
        self, idle_since: datetime, *, now: datetime | None = None, fail: bool = False
    ) -> list[_m.StalledBatch]:
        """Open batches whose driver died (see :class:`~dspex.store._maintenance.StalledBatch`):
        no item ``running`` under a lease live at ``now``, no driver lease live at ``now``
        (:meth:`~dspex.store.batches.BatchStore.take_batch_driver`), items still to run, and no
        item activity since ``idle_since``.

        With ``fail`` each is failed (counts recomputed from its items, ``finished_at`` now);
        its unfinished items stay as they are, so ``dspex batch … --resume`` runs them.
        """

    @abc.abstractmethod
    async def delete_batches(
        self,
        finished_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        """Delete up to ``limit`` finished batches created and finished before a time, with
        their items (executions, steps, attempts). A dry run counts and deletes nothing.

        Returns:
            How many batches were (or would be) deleted, and up to ``sample`` of their ids.
        """

    @abc.abstractmethod
    async def delete_breakers(self, keep: Collection[str], *, dry_run: bool = False) -> list[str]:
        """Delete the circuit-breaker rows of every backend not in ``keep``; their names."""

    @abc.abstractmethod
    async def reclaim_space(self, *, vacuum: bool = False) -> _m.SpaceReport | None:
        """Give free pages back to the file system after deletes (SQLite; ``None`` elsewhere).

        An incremental-vacuum database (every one made since this existed) frees its pages at
        once. An older file reports ``vacuum_needed``; with ``vacuum`` it is rebuilt once with
        ``VACUUM`` and switched to incremental vacuum (it needs free disk about its size and
        holds the write lock meanwhile).
        """

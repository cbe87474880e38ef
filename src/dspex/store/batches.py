"""The :class:`BatchStore` interface: batches, and the group writes that run their items.

Implemented by :mod:`dspex.store._memory_batches` and :mod:`dspex.store._sql_batches`; its share
of the contract suite is ``tests/store/test_contract_batches*.py``. Every group write is ONE
transaction of a few set-based statements, never one round trip per item.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from dspex.records import BatchRecord, BatchStatus, ExecutionRecord, FinishRequest

__all__ = ["HANDED_OVER", "BatchStore"]

HANDED_OVER = "handed-over"
"""The driver of a batch handed over by a process that stopped (its lease already lapsed)."""


class BatchStore(abc.ABC):
    """Batches of executions of one program version: their records, items, leases and counts.

    A batch's completed/failed/cancelled counts always equal the number of its executions in
    each of those statuses: every write that moves an item in or out of one changes the count
    in the same transaction.
    """

    @abc.abstractmethod
    async def create_batch(
        self,
        program: str,
        program_version: int,
        config: dict[str, Any],
        total: int,
        *,
        batch_id: str | None = None,
    ) -> BatchRecord:
        """Create a ``pending`` batch of ``total`` items (a new id unless one is given).

        Raises:
            NotFoundError: the program version does not exist.
            StorageError: the id is taken, or the config is not JSON-serialisable.
        """

    @abc.abstractmethod
    async def get_batch(self, batch_id: str) -> BatchRecord:
        """One batch, or :class:`NotFoundError`."""

    @abc.abstractmethod
    async def list_batches(
        self, *, statuses: Sequence[BatchStatus] = (), limit: int = 100, program: str | None = None
    ) -> list[BatchRecord]:
        """Batches (only these statuses, only this program, when given), newest first."""

    @abc.abstractmethod
    async def set_batch_status(self, batch_id: str, status: BatchStatus) -> BatchRecord:
        """Set a batch's status (a terminal status also sets ``finished_at``).

        Raises:
            NotFoundError: no such batch.
        """

    # -- the driver: the process running a batch, under a lease ---------------------------------

    @abc.abstractmethod
    async def take_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float, *, lapsed_only: bool = False
    ) -> BatchRecord | None:
        """Make ``driver`` the batch's driver, under a lease of ``lease_seconds``, in ONE
        conditional write.

        By default the batch is taken whoever holds it (a run or resume of the batch is the
        caller's decision) and an earlier cancel request is cleared. With ``lapsed_only`` it is
        taken only when open, not asked to cancel, and its driver's lease expired
        (:meth:`BatchRecord.driver_lapsed`): of several processes trying at once, exactly one
        gets it.

        Returns:
            The batch as taken, or ``None`` (``lapsed_only``: someone holds it, or it ended or
            is being cancelled).

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
            NotFoundError: no such batch.
        """

    @abc.abstractmethod
    async def renew_batch_driver(
        self, batch_id: str, driver: str, lease_seconds: float
    ) -> BatchRecord:
        """Extend the driver's lease by ``lease_seconds`` from now, when ``driver`` still holds
        it; the batch as it now is either way (its ``cancel_requested`` tells the driver to stop;
        its ``driver`` whether the lease is still held).

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
            NotFoundError: no such batch.
        """

    @abc.abstractmethod
    async def release_batch_driver(self, batch_id: str, driver: str) -> None:
        """Clear the driver and its lease, when ``driver`` holds it (a run ended)."""

    @abc.abstractmethod
    async def hand_over_batch(self, batch_id: str) -> BatchRecord | None:
        """Leave a batch whose run was stopped (``cancelled``, not at anyone's request) to be
        taken over: ``running`` again, its driver lease already lapsed, in ONE conditional
        write. Used by a process that stops while it drives the batch (a service replica shut
        down), so another process, or this one restarted, resumes it.

        Returns:
            The batch as handed over, or ``None`` when it is not ``cancelled`` or a cancel was
            requested (it stays as it is).

        Raises:
            NotFoundError: no such batch.
        """

    @abc.abstractmethod
    async def request_batch_cancel(self, batch_id: str) -> BatchRecord:
        """Ask the process driving an open batch to cancel it (it sees the request when it
        renews its lease).

        A batch with no live driver (none, or its lease expired) is ``cancelled`` at once, in
        the same transaction: nobody would see the request. A finished batch is left as it is.

        Returns:
            The batch as it now is.

        Raises:
            NotFoundError: no such batch.
        """

    @abc.abstractmethod
    async def lapsed_batches(self, *, limit: int = 100) -> list[BatchRecord]:
        """Open batches whose driver's lease expired and that no cancel was asked for, oldest
        first (candidates for :meth:`take_batch_driver` with ``lapsed_only``)."""

    # -- items: the executions of a batch, many per transaction --------------------------------

    @abc.abstractmethod
    async def add_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
    ) -> int:
        """Record a batch's items ``pending`` before any runs, in ONE transaction, so that
        another process can run them from the store (their inputs are kept).

        Idempotent per ``(batch_id, batch_index)``: an index that already has an execution is
        left as it is. Returns how many were added.

        Raises:
            NotFoundError: the batch or the program version does not exist.
            StorageError: an input is not JSON-serialisable (nothing was written).
        """

    @abc.abstractmethod
    async def claim_batch_items(
        self,
        batch_id: str,
        indexes: Sequence[int],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        """Claim the batch items at ``indexes`` that may run, in ONE transaction.

        Claimable: ``pending`` (put back by the reaper), ``running`` with an expired lease,
        ``cancelled`` (a resumed batch re-runs them) and, when ``retry_failed``, ``failed``;
        ``completed`` never. The claimed items become ``running`` under ONE new lease token
        shared by the group (``attempts`` + 1, ``started_at``, ``worker_id``,
        ``lease_expires_at``). A claimed item that was failed or cancelled leaves that count of
        its batch, so the batch counts always equal the number of its executions in each
        terminal status.

        Returns:
            ``{batch_index: (execution_id, lease_token)}`` for the items claimed.

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
        """

    @abc.abstractmethod
    async def add_and_claim_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        """Create a batch's items and claim them, with :meth:`claim_batch_items` over the ones
        that exist already, in ONE transaction.

        Idempotent per ``(batch_id, batch_index)``: a resumed batch feeds the same items again.
        A new index is inserted directly as ``running`` under the new lease token
        (``attempts`` 1, ``started_at``, ``worker_id``, ``lease_expires_at``), never as
        ``pending`` first. An index that already has an execution (a resumed batch) keeps its
        inputs and goes through the rules of :meth:`claim_batch_items`: claimable when
        ``pending``, ``running`` with an expired lease, ``cancelled`` or (when
        ``retry_failed``) ``failed``, never when ``completed``; a claimed failed or cancelled
        item leaves that count of its batch. Every item claimed, new or not, shares ONE new
        lease token. The same index twice in ``items``: the first one wins.

        Args:
            batch_id: the batch the items belong to.
            program: the program name (of the batch).
            program_version: the version the new items run.
            items: ``(batch_index, inputs)`` pairs; callers feed chunks of a few hundred.
            worker_id: who holds the lease.
            lease_seconds: how long the lease lasts before a heartbeat must renew it.
            retry_failed: whether existing ``failed`` items are claimed again.

        Returns:
            ``{batch_index: (execution_id, lease_token)}`` for the items claimed (every new
            one, and the existing ones that were claimable).

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
            NotFoundError: the batch or the program version does not exist.
            StorageError: an input is not JSON-serialisable (nothing was written).
        """

    @abc.abstractmethod
    async def finish_executions(self, requests: Sequence[FinishRequest]) -> list[bool]:
        """End many claimed executions in ONE transaction, each conditional on its lease token.

        A request whose token no longer holds its (running) execution writes nothing, its
        steps and attempts included, and does not affect the others. Program counters get the
        summed deltas of the written rows (as
        :meth:`~dspex.store.executions.ExecutionStore.finish_execution` counts them), and each
        affected batch's completed/failed/cancelled counts grow by the rows written.

        Returns:
            Per request, in order: ``True`` when written, ``False`` when the lease was lost
            (or the execution does not exist).

        Raises:
            ValidationError: a request's status is not terminal; nothing was written.
        """

    @abc.abstractmethod
    async def heartbeat_lease(self, lease_token: str, lease_seconds: float) -> int:
        """Extend every running execution held by ``lease_token``; returns how many."""

    @abc.abstractmethod
    async def batch_item_states(self, batch_id: str) -> dict[str, int]:
        """How many executions of the batch are in each status (statuses with none omitted).

        Raises:
            NotFoundError: no such batch.
        """

    @abc.abstractmethod
    def iter_batch_results(
        self, batch_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[ExecutionRecord]:
        """The batch's indexed executions in ``batch_index`` order, read ``chunk`` at a time.

        Memory stays flat however large the batch: only one chunk is held at once.

        Raises:
            NotFoundError: no such batch (on the first iteration).
        """

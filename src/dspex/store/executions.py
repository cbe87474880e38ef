"""The :class:`ExecutionStore` interface: one execution at a time, its lease, steps and attempts.

Implemented by :mod:`dspex.store._memory_executions` and :mod:`dspex.store._sql_executions`; its
share of the contract suite is ``tests/store/test_contract_executions*.py``. The group writes
batches use (many executions in one transaction) are :class:`~dspex.store.batches.BatchStore`'s.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from dspex.records import (
    AttemptRecord,
    ExecutionFilter,
    ExecutionRecord,
    ExecutionRecordPage,
    ExecutionStatus,
    StepRecord,
    UsageMap,
)

__all__ = ["ExecutionStore"]


class ExecutionStore(abc.ABC):
    """Executions of program versions, with the steps and attempts recorded when they finish
    (and, for a long run, while it runs: :meth:`record_steps`).

    Every write to an execution after it was claimed is conditional on its lease token: a
    worker that lost its lease gets :class:`~dspex.errors.LeaseLostError` and changes nothing.
    """

    @abc.abstractmethod
    async def start_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        *,
        worker_id: str,
        lease_seconds: float,
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
        require_ready: bool = False,
        require_latest: bool = False,
    ) -> ExecutionRecord:
        """Create an execution already claimed by ``worker_id``: ``running`` under a fresh lease.

        One transaction, program checks included. The returned record carries the
        ``lease_token`` every later write must present.

        Args:
            program: the program name.
            program_version: the version to run.
            inputs: the (validated) inputs.
            worker_id: who holds the lease.
            lease_seconds: how long the lease lasts before a heartbeat must renew it.
            execution_id: the id to use (default: a new :func:`~dspex.records.new_id`).
            batch_id: the batch it belongs to.
            batch_index: its position in the batch.
            require_ready: create it only if the version is ``ready`` (checked in the same
                transaction, so a cached program record cannot run an archived version).
            require_latest: create it only if no newer version of the program exists.

        Raises:
            NotFoundError: the program version (or batch) does not exist.
            ProgramStateError: a ``require_*`` condition does not hold; nothing was created.
            ValidationError: ``lease_seconds`` is not positive.
        """

    @abc.abstractmethod
    async def heartbeat(
        self, execution_id: str, lease_token: str, lease_seconds: float
    ) -> datetime:
        """Extend the lease; returns the new expiry. :class:`LeaseLostError` if not the holder.

        Raises :class:`~dspex.errors.ExecutionCancelledError` (the lease renewed all the same)
        when a cancel was asked for (:meth:`request_execution_cancel`): the same statement
        renews and reports it, so the holder learns of it without a query of its own.
        """

    @abc.abstractmethod
    async def request_execution_cancel(self, execution_id: str) -> ExecutionRecord:
        """Cancel an execution wherever it runs; the execution as it now is.

        A ``running`` execution whose lease is live gets ``cancel_requested_at`` (its holder
        cancels the run on its next :meth:`heartbeat`, and records it ``cancelled``); one that is
        ``pending`` or whose lease expired is ``cancelled`` at once (error code ``cancelled``,
        lease released). A finished execution is returned unchanged.

        Raises:
            NotFoundError: no such execution.
        """

    @abc.abstractmethod
    async def record_steps(
        self,
        execution_id: str,
        lease_token: str,
        steps: Sequence[StepRecord],
        attempts: Sequence[AttemptRecord] = (),
    ) -> ExecutionRecord:
        """Record the steps a running execution finished so far, conditional on its lease token,
        so that anyone reading the store can follow it before it ends.

        ``steps`` and ``attempts`` are the first ones of the run, in run order, from its very
        first (every call gives all of them again, plus the ones finished since): the store
        writes only those past the ones it recorded already (its ``live_steps`` and
        ``live_attempts``). Giving the same steps twice writes nothing the second time, and
        :meth:`finish_execution`, given the whole run, writes only the steps and attempts after
        them. Steps come back from :meth:`list_steps` in run order, as if written at the end.
        (Batch items, finished in groups by
        :meth:`~dspex.store.batches.BatchStore.finish_executions`, do not record steps early:
        a group finish writes every step it is given.)

        Returns:
            The execution as it now is (``live_steps``/``live_attempts`` count what it holds).

        Raises:
            LeaseLostError: this token no longer holds the execution; nothing was written.
            NotFoundError: no such execution.
        """

    @abc.abstractmethod
    async def finish_execution(
        self,
        execution_id: str,
        lease_token: str,
        status: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        usage: UsageMap | None = None,
        duration_ms: float | None = None,
        backend: str | None = None,
        steps: Sequence[StepRecord] = (),
        attempts: Sequence[AttemptRecord] = (),
        bump_counters: bool = True,
        cost_usd: float = 0.0,
    ) -> ExecutionRecord:
        """End a claimed execution in one transaction, conditional on its lease token.

        Writes the terminal ``status`` and results (``cost_usd``: what its tokens cost, in US
        dollars), releases the lease, inserts ``steps`` and ``attempts`` (every one of the run,
        in run order; the first ``live_steps``/``live_attempts`` of them, recorded while it ran
        by :meth:`record_steps`, are not written again), and (when ``bump_counters`` and the
        status is completed or failed) counts it on its program version.

        Raises:
            LeaseLostError: this token no longer holds the execution; nothing was written.
            NotFoundError: no such execution.
            ValidationError: ``status`` is not terminal.
        """

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """One execution, or :class:`NotFoundError`."""

    @abc.abstractmethod
    async def list_executions(
        self,
        filters: ExecutionFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionRecordPage:
        """Executions matching ``filters``, newest first, ``limit`` per page.

        Pass the returned ``next_cursor`` as ``cursor`` for the following page.
        """

    @abc.abstractmethod
    async def list_steps(self, execution_id: str) -> list[StepRecord]:
        """An execution's steps in the order they were recorded."""

    @abc.abstractmethod
    async def list_attempts(self, execution_id: str) -> list[AttemptRecord]:
        """An execution's backend calls in the order they were recorded."""

    @abc.abstractmethod
    async def list_steps_for_program(
        self, name: str, *, version: int | None = None, limit: int = 1000
    ) -> list[StepRecord]:
        """The most recent ``limit`` steps recorded for a program (newest first): its history."""

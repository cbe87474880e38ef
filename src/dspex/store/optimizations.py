"""The :class:`OptimizationStore` interface: optimization runs and the trials they scored.

A run is held by the process running it under a lease (``worker_id``, ``lease_token``,
``lease_expires_at``) that its heartbeat renews; a run whose lease expired lost its process,
and can be claimed again (resumed) like a ``failed`` or ``interrupted`` one.

Implemented by :mod:`dspex.store._memory_optimizations` and :mod:`dspex.store._sql_optimizations`;
its share of the contract suite is ``tests/store/test_contract_optimizations.py``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dspex.records import OptimizationRecord, OptimizationStatus, OptimizationTrial

__all__ = ["NewOptimization", "OptimizationStore"]


@dataclass(frozen=True, slots=True)
class NewOptimization:
    """What an optimization run is created with (see :class:`OptimizationRecord`)."""

    program: str
    program_version: int
    optimizer: str
    metric: str
    trainset_hash: str
    trainset_size: int
    valset_size: int
    valset_hash: str | None = None
    seed: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    worker_id: str | None = None
    lease_seconds: float | None = None
    request: dict[str, Any] | None = None
    """What the run was asked (data sets, options): what a resumed run runs with."""


class OptimizationStore(abc.ABC):
    """Optimization runs: created ``running``, given trials, finished once."""

    @abc.abstractmethod
    async def create_optimization(self, new: NewOptimization) -> OptimizationRecord:
        """Record a new run in ``running`` status, with a new id (and, with ``worker_id`` and
        ``lease_seconds``, a lease held by that worker: a new ``lease_token``).

        Raises:
            NotFoundError: the program version does not exist.
            StorageError: the settings or request are not JSON-serialisable.
            ValidationError: ``lease_seconds`` is not positive.
        """

    @abc.abstractmethod
    async def get_optimization_request(self, optimization_id: str) -> dict[str, Any] | None:
        """What the run was created with (``NewOptimization.request``); ``None`` if nothing.

        Raises:
            NotFoundError: no such run.
        """

    @abc.abstractmethod
    async def heartbeat_optimization(
        self, optimization_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        """Extend the lease of a ``running`` run held by ``lease_token``; ``False`` when that
        lease is no longer the run's (it was claimed again, or the run ended).

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
        """

    @abc.abstractmethod
    async def claim_optimization(
        self, optimization_id: str, *, worker_id: str, lease_seconds: float
    ) -> OptimizationRecord | None:
        """Take over a run to resume it: a ``failed`` or ``interrupted`` run, or a ``running``
        one whose lease expired, becomes ``running`` under a new lease held by ``worker_id``
        (``attempts`` + 1, ``error`` and ``finished_at`` cleared); its trials are kept.

        Returns:
            The claimed run, or ``None`` when it cannot be claimed (completed, or running under
            a live lease, or running with no lease at all).

        Raises:
            NotFoundError: no such run.
            ValidationError: ``lease_seconds`` is not positive.
        """

    @abc.abstractmethod
    async def add_optimization_trials(
        self, optimization_id: str, trials: Sequence[OptimizationTrial]
    ) -> None:
        """Append trials to a run (numbers are the caller's; order is kept by number).

        Raises:
            NotFoundError: no such run.
        """

    @abc.abstractmethod
    async def finish_optimization(
        self,
        optimization_id: str,
        *,
        status: OptimizationStatus,
        baseline_score: float | None = None,
        score: float | None = None,
        result_version: int | None = None,
        stats: dict[str, Any] | None = None,
        error: str | None = None,
        lease_token: str | None = None,
    ) -> OptimizationRecord:
        """End a running run (``completed``, ``failed`` or ``interrupted``), once; with
        ``lease_token``, only while the run is held by that lease (its lease is released).

        Raises:
            NotFoundError: no such run.
            ValidationError: ``status`` is ``running``.
            LeaseLostError: the run is running under another lease (it was claimed again).
            StorageError: the run has already finished.
        """

    @abc.abstractmethod
    async def get_optimization(self, optimization_id: str) -> OptimizationRecord:
        """One run with its trials (by number).

        Raises:
            NotFoundError: no such run.
        """

    @abc.abstractmethod
    async def list_optimizations(
        self, *, program: str | None = None, limit: int = 50
    ) -> list[OptimizationRecord]:
        """Runs, newest first (without their trials), of one program or all.

        Raises:
            ValidationError: ``limit`` is below 1.
        """

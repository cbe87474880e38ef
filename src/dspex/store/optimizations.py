"""The :class:`OptimizationStore` interface: optimization runs and the trials they scored.

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


class OptimizationStore(abc.ABC):
    """Optimization runs: created ``running``, given trials, finished once."""

    @abc.abstractmethod
    async def create_optimization(self, new: NewOptimization) -> OptimizationRecord:
        """Record a new run in ``running`` status, with a new id.

        Raises:
            NotFoundError: the program version does not exist.
            StorageError: the settings are not JSON-serialisable.
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
    ) -> OptimizationRecord:
        """End a running run (``completed`` or ``failed``), once.

        Raises:
            NotFoundError: no such run.
            ValidationError: ``status`` is ``running``.
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

"""The :class:`ProgramStore` interface: program versions and their lifecycle.

Implemented by :mod:`dspex.store._memory_programs` and :mod:`dspex.store._sql_programs`; its
share of the contract suite is ``tests/store/test_contract_programs.py``.
"""

from __future__ import annotations

import abc
from typing import Any

from dspex.records import ProgramRecord, ProgramStatus, PromotionRecord

__all__ = ["ProgramStore"]


class ProgramStore(abc.ABC):
    """Program versions: registered specs, their status and their execution counters.

    The counters are written by the execution and batch writes that finish executions, in the
    same transaction; nothing else changes them.
    """

    @abc.abstractmethod
    async def put_program(self, name: str, spec: dict[str, Any], spec_hash: str) -> ProgramRecord:
        """Register a program spec.

        Returns the newest version unchanged when its ``spec_hash`` equals ``spec_hash``;
        otherwise creates the next version (starting at 1) in ``draft`` status.

        Raises:
            StorageError: the spec is not JSON-serialisable.
        """

    @abc.abstractmethod
    async def get_program(self, name: str, version: int | None = None) -> ProgramRecord:
        """One version of a program (the newest when ``version`` is ``None``).

        Raises:
            NotFoundError: no such program, or no such version of it.
        """

    @abc.abstractmethod
    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramRecord]:
        """The newest version of every program (or every version), by name then version."""

    @abc.abstractmethod
    async def set_program_status(
        self,
        name: str,
        version: int,
        status: ProgramStatus,
        *,
        error: str | None = None,
        expected: ProgramStatus | None = None,
    ) -> ProgramRecord:
        """Move a program version to ``status`` (a legal lifecycle step only).

        Args:
            name: the program.
            version: the version to change.
            status: the new status.
            error: why, when ``status`` is ``error`` (cleared for any other status).
            expected: change only if the current status is this one (compare-and-set).

        Raises:
            ProgramStateError: the transition is not allowed, or the status is not ``expected``
                (including when another writer changed it first).
            NotFoundError: no such program version.
        """

    @abc.abstractmethod
    async def promote(
        self,
        name: str,
        version: int,
        *,
        forced: bool,
        promoted_by: str,
        metric: str | None = None,
        devset_hash: str | None = None,
        score: float | None = None,
        previous_score: float | None = None,
        min_improvement: float | None = None,
        expected_current: int | None = None,
    ) -> PromotionRecord:
        """Make ``version`` the program's current version, and record the move.

        Args:
            name: the program.
            version: the version to make current.
            forced: the score gate was skipped.
            promoted_by: who asked (a worker or user id).
            metric: the metric the gate compared, if any.
            devset_hash: the devset the gate compared on, if any.
            score: the version's score.
            previous_score: the score of the version that was current.
            min_improvement: the gate's margin.
            expected_current: move only if :meth:`current_version` still returns this (``None``:
                no version was ever promoted): a compare-and-set against a concurrent promotion.

        Raises:
            NotFoundError: no such program version.
            ProgramStateError: the current version changed since it was read.
        """

    @abc.abstractmethod
    async def current_version(self, name: str) -> int | None:
        """The version last promoted, or ``None`` when none ever was (the newest is used)."""

    @abc.abstractmethod
    async def list_promotions(self, name: str, *, limit: int = 50) -> list[PromotionRecord]:
        """A program's promotions, newest first."""

"""The :class:`EvaluationStore` interface: evaluations and the metric value of every item.

An evaluation is a batch scored by a metric: it is created when its batch is, scored once every
item is terminal (:meth:`EvaluationStore.put_item_scores`, which may be repeated: a resumed
evaluation scores its items again) and finished with its mean score. A finished evaluation of a
version on a devset (by hash) with a metric is what ``promote`` reuses.

Implemented by :mod:`dspex.store._memory_evaluations` and :mod:`dspex.store._sql_evaluations`;
its share of the contract suite is ``tests/store/test_contract_evaluations.py``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence

from dspex.records import EvaluationRecord, ItemScore

__all__ = ["EvaluationStore"]


class EvaluationStore(abc.ABC):
    """Evaluations (the ``evaluations`` table) and their item scores (``evaluation_items``)."""

    @abc.abstractmethod
    async def create_evaluation(
        self,
        *,
        program: str,
        version: int,
        metric: str,
        devset_hash: str,
        devset: str,
        batch_id: str,
        total: int,
    ) -> EvaluationRecord:
        """Record a ``running`` evaluation of ``batch_id`` (one evaluation per batch).

        Raises:
            NotFoundError: no such program version or batch.
            StorageError: the batch already has an evaluation.
        """

    @abc.abstractmethod
    async def get_evaluation(self, evaluation_id: str) -> EvaluationRecord:
        """One evaluation. Raises :class:`NotFoundError` when there is none."""

    @abc.abstractmethod
    async def evaluation_for_batch(self, batch_id: str) -> EvaluationRecord | None:
        """The evaluation of a batch, if the batch is one."""

    @abc.abstractmethod
    async def find_evaluation(
        self, program: str, version: int, metric: str, devset_hash: str
    ) -> EvaluationRecord | None:
        """The newest ``completed`` evaluation of this version, metric and devset, if any."""

    @abc.abstractmethod
    async def list_evaluations(
        self, program: str, *, version: int | None = None, limit: int = 50
    ) -> list[EvaluationRecord]:
        """A program's evaluations (of one version, if given), newest first."""

    @abc.abstractmethod
    async def put_item_scores(self, evaluation_id: str, scores: Sequence[ItemScore]) -> None:
        """Store item scores; an item scored before is overwritten (scoring again is safe).

        Raises:
            NotFoundError: no such evaluation.
        """

    @abc.abstractmethod
    def iter_item_scores(self, evaluation_id: str) -> AsyncIterator[ItemScore]:
        """Every stored item score of an evaluation, by item index (read in chunks)."""

    @abc.abstractmethod
    async def finish_evaluation(
        self, evaluation_id: str, *, score: float, failed: int
    ) -> EvaluationRecord:
        """Mark an evaluation ``completed`` with its mean score and its failed item count.

        Raises:
            NotFoundError: no such evaluation.
        """

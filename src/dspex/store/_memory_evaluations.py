"""Evaluations in memory (the twin of :mod:`dspex.store._sql_evaluations`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

from dspex.errors import StorageError
from dspex.records import EvaluationRecord, EvaluationStatus, ItemScore, new_id
from dspex.store._memory_tables import MemoryTables
from dspex.store.base import Clock
from dspex.store.evaluations import EvaluationStore

__all__ = ["MemoryEvaluations"]


class MemoryEvaluations(EvaluationStore):
    """:class:`~dspex.store.evaluations.EvaluationStore` over :class:`MemoryTables`."""

    _db: MemoryTables
    clock: Clock

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
        db = self._db
        db.check_open()
        db.program(program, version)
        db.batch(batch_id)
        if any(e.batch_id == batch_id for e in db.evaluations.values()):
            raise StorageError(f"batch {batch_id!r} already has an evaluation")
        record = EvaluationRecord(
            id=new_id(),
            program=program,
            program_version=version,
            metric=metric,
            devset_hash=devset_hash,
            devset=devset,
            batch_id=batch_id,
            status=EvaluationStatus.RUNNING,
            total=total,
            score=None,
            failed=None,
            created_at=self.clock(),
            finished_at=None,
        )
        db.evaluations[record.id] = record
        db.evaluation_items[record.id] = {}
        return record

    async def get_evaluation(self, evaluation_id: str) -> EvaluationRecord:
        self._db.check_open()
        return self._db.evaluation(evaluation_id)

    async def evaluation_for_batch(self, batch_id: str) -> EvaluationRecord | None:
        self._db.check_open()
        return next((e for e in self._db.evaluations.values() if e.batch_id == batch_id), None)

    async def find_evaluation(
        self, program: str, version: int, metric: str, devset_hash: str
    ) -> EvaluationRecord | None:
        self._db.check_open()
        found = [
            e
            for e in self._db.evaluations.values()
            if (e.program, e.program_version, e.metric, e.devset_hash)
            == (program, version, metric, devset_hash)
            and e.status is EvaluationStatus.COMPLETED
        ]
        return max(found, key=lambda e: (e.created_at, e.id), default=None)

    async def list_evaluations(
        self, program: str, *, version: int | None = None, limit: int = 50
    ) -> list[EvaluationRecord]:
        self._db.check_open()
        found = [
            e
            for e in self._db.evaluations.values()
            if e.program == program and (version is None or e.program_version == version)
        ]
        found.sort(key=lambda e: (e.created_at, e.id), reverse=True)
        return found[:limit]

    async def put_item_scores(self, evaluation_id: str, scores: Sequence[ItemScore]) -> None:
        self._db.check_open()
        self._db.evaluation(evaluation_id)
        items = self._db.evaluation_items[evaluation_id]
        for score in scores:
            items[score.index] = score

    async def iter_item_scores(self, evaluation_id: str) -> AsyncIterator[ItemScore]:
        self._db.check_open()
        items = self._db.evaluation_items.get(evaluation_id, {})
        for index in sorted(items):
            yield items[index]

    async def finish_evaluation(
        self, evaluation_id: str, *, score: float, failed: int
    ) -> EvaluationRecord:
        self._db.check_open()
        record = replace(
            self._db.evaluation(evaluation_id),
            status=EvaluationStatus.COMPLETED,
            score=score,
            failed=failed,
            finished_at=self.clock(),
        )
        self._db.evaluations[evaluation_id] = record
        return record

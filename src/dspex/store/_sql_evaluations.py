"""Evaluations in SQL (the ``evaluations`` and ``evaluation_items`` tables)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dspex.errors import NotFoundError, StorageError
from dspex.records import EvaluationRecord, EvaluationStatus, ItemScore, new_id
from dspex.store._sql_core import SqlCore
from dspex.store.evaluations import EvaluationStore
from dspex.store.tables import batches as t_batches
from dspex.store.tables import evaluation_items as t_items
from dspex.store.tables import evaluations as t_eval
from dspex.store.tables import programs as t_programs

__all__ = ["SqlEvaluations"]

_CHUNK = 1000


def _evaluation(row: sa.RowMapping) -> EvaluationRecord:
    return EvaluationRecord(
        id=row["id"],
        program=row["program"],
        program_version=row["program_version"],
        metric=row["metric"],
        devset_hash=row["devset_hash"],
        devset=row["devset"],
        batch_id=row["batch_id"],
        status=EvaluationStatus(row["status"]),
        total=row["total"],
        score=row["score"],
        failed=row["failed"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
    )


class SqlEvaluations(SqlCore, EvaluationStore):
    """:class:`~dspex.store.evaluations.EvaluationStore` in SQLite or PostgreSQL."""

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
        values = {
            "id": new_id(),
            "program": program,
            "program_version": version,
            "metric": metric,
            "devset_hash": devset_hash,
            "devset": devset,
            "batch_id": batch_id,
            "status": EvaluationStatus.RUNNING.value,
            "total": total,
            "score": None,
            "failed": None,
            "created_at": self.clock(),
            "finished_at": None,
        }
        async with self._tx(write=True) as conn:
            # Checked first: SQLite enforces no foreign keys unless asked to.
            if not await self._exists(conn, t_programs, name=program, version=version):
                raise NotFoundError(f"program {program!r} has no version {version}")
            if not await self._exists(conn, t_batches, id=batch_id):
                raise NotFoundError(f"batch {batch_id!r} does not exist")
            if await self._exists(conn, t_eval, batch_id=batch_id):
                raise StorageError(f"batch {batch_id!r} already has an evaluation")
            row = await conn.execute(t_eval.insert().values(**values).returning(t_eval))
            return _evaluation(row.mappings().one())

    async def get_evaluation(self, evaluation_id: str) -> EvaluationRecord:
        async with self._tx() as conn:
            query = t_eval.select().where(t_eval.c.id == evaluation_id)
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise NotFoundError(f"evaluation {evaluation_id!r} does not exist")
        return _evaluation(row)

    async def evaluation_for_batch(self, batch_id: str) -> EvaluationRecord | None:
        async with self._tx() as conn:
            query = t_eval.select().where(t_eval.c.batch_id == batch_id)
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _evaluation(row)

    async def find_evaluation(
        self, program: str, version: int, metric: str, devset_hash: str
    ) -> EvaluationRecord | None:
        c = t_eval.c
        query = (
            t_eval.select()
            .where(
                c.program == program,
                c.program_version == version,
                c.metric == metric,
                c.devset_hash == devset_hash,
                c.status == EvaluationStatus.COMPLETED.value,
            )
            .order_by(c.created_at.desc(), c.id.desc())
            .limit(1)
        )
        async with self._tx() as conn:
            row = (await conn.execute(query)).mappings().first()
        return None if row is None else _evaluation(row)

    async def list_evaluations(
        self, program: str, *, version: int | None = None, limit: int = 50
    ) -> list[EvaluationRecord]:
        c = t_eval.c
        query = t_eval.select().where(c.program == program)
        if version is not None:
            query = query.where(c.program_version == version)
        query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        async with self._tx() as conn:
            return [_evaluation(r) for r in (await conn.execute(query)).mappings()]

    async def put_item_scores(self, evaluation_id: str, scores: Sequence[ItemScore]) -> None:
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        stmt = insert(t_items)
        upsert = stmt.on_conflict_do_update(
            index_elements=["evaluation_id", "batch_index"],
            set_={k: stmt.excluded[k] for k in ("execution_id", "status", "score")},
        )
        async with self._tx(write=True) as conn:
            if not await self._exists(conn, t_eval, id=evaluation_id):
                raise NotFoundError(f"evaluation {evaluation_id!r} does not exist")
            rows = [
                {
                    "evaluation_id": evaluation_id,
                    "batch_index": s.index,
                    "execution_id": s.execution_id,
                    "status": s.status,
                    "score": s.score,
                }
                for s in scores
            ]
            if rows:
                # one statement run for every row (executemany): compiled once and cached,
                # where a multi-row VALUES clause is compiled anew for each call
                await conn.execute(upsert, rows)

    async def iter_item_scores(self, evaluation_id: str) -> AsyncIterator[ItemScore]:
        c = t_items.c
        last = -1
        while True:
            query = (
                sa.select(c.batch_index, c.execution_id, c.status, c.score)
                .where(c.evaluation_id == evaluation_id, c.batch_index > last)
                .order_by(c.batch_index)
                .limit(_CHUNK)
            )
            async with self._tx() as conn:
                page = [ItemScore(*row) for row in await conn.execute(query)]
            for item in page:
                yield item
            if len(page) < _CHUNK:
                return
            last = page[-1].index

    async def finish_evaluation(
        self, evaluation_id: str, *, score: float, failed: int
    ) -> EvaluationRecord:
        stmt = (
            t_eval.update()
            .where(t_eval.c.id == evaluation_id)
            .values(
                status=EvaluationStatus.COMPLETED.value,
                score=score,
                failed=failed,
                finished_at=self.clock(),
            )
            .returning(t_eval)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise NotFoundError(f"evaluation {evaluation_id!r} does not exist")
        return _evaluation(row)

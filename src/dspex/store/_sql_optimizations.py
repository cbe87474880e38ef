"""Optimization runs in SQL (the ``optimizations`` and ``optimization_trials`` tables)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from dspex.errors import NotFoundError, StorageError
from dspex.records import OptimizationRecord, OptimizationStatus, OptimizationTrial, new_id
from dspex.store import _rows
from dspex.store._rules import check_finishing, check_positive, json_copy
from dspex.store._sql_core import SqlCore
from dspex.store.optimizations import NewOptimization, OptimizationStore
from dspex.store.tables import optimization_trials as t_trials
from dspex.store.tables import optimizations as t_opt

__all__ = ["SqlOptimizations"]


class SqlOptimizations(SqlCore, OptimizationStore):
    """:class:`~dspex.store.optimizations.OptimizationStore` in SQLite or PostgreSQL."""

    async def create_optimization(self, new: NewOptimization) -> OptimizationRecord:
        values = {
            "id": new_id(),
            "program": new.program,
            "program_version": new.program_version,
            "optimizer": new.optimizer,
            "settings": json_copy(new.settings, "optimizer settings"),
            "metric": new.metric,
            "trainset_hash": new.trainset_hash,
            "trainset_size": new.trainset_size,
            "valset_hash": new.valset_hash,
            "valset_size": new.valset_size,
            "seed": new.seed,
            "status": OptimizationStatus.RUNNING.value,
            "baseline_score": None,
            "score": None,
            "result_version": None,
            "stats": {},
            "error": None,
            "created_at": self.clock(),
            "finished_at": None,
        }
        async with self._tx(write=True) as conn:
            # checked first: SQLite enforces no foreign key unless asked to
            await self._program(conn, new.program, new.program_version)
            row = (await conn.execute(t_opt.insert().values(**values).returning(t_opt))).mappings()
            return _rows.optimization_from_row(row.one())

    async def add_optimization_trials(
        self, optimization_id: str, trials: Sequence[OptimizationTrial]
    ) -> None:
        rows = [
            {
                "optimization_id": optimization_id,
                "number": t.number,
                "score": t.score,
                "detail": json_copy(t.detail, "trial detail"),
            }
            for t in trials
        ]
        async with self._tx(write=True) as conn:
            if not await self._exists(conn, t_opt, id=optimization_id):
                raise NotFoundError(f"optimization {optimization_id!r} does not exist")
            if rows:
                await conn.execute(t_trials.insert(), rows)

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
        check_finishing(status)
        stmt = (
            t_opt.update()
            .where(
                t_opt.c.id == optimization_id,
                t_opt.c.status == OptimizationStatus.RUNNING.value,
            )
            .values(
                status=status.value,
                baseline_score=baseline_score,
                score=score,
                result_version=result_version,
                stats=json_copy(stats or {}, "optimization stats"),
                error=error,
                finished_at=self.clock(),
            )
            .returning(t_opt)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is not None:
                return _rows.optimization_from_row(row)
            query = sa.select(t_opt.c.status).where(t_opt.c.id == optimization_id)
            current = (await conn.execute(query)).scalar()
        if current is None:
            raise NotFoundError(f"optimization {optimization_id!r} does not exist")
        raise StorageError(f"optimization {optimization_id!r} already finished ({current})")

    async def get_optimization(self, optimization_id: str) -> OptimizationRecord:
        async with self._tx() as conn:
            row = (
                (await conn.execute(t_opt.select().where(t_opt.c.id == optimization_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFoundError(f"optimization {optimization_id!r} does not exist")
            query = (
                t_trials.select()
                .where(t_trials.c.optimization_id == optimization_id)
                .order_by(t_trials.c.number, t_trials.c.id)
            )
            trials = tuple(_rows.trial_from_row(r) for r in (await conn.execute(query)).mappings())
        return _rows.optimization_from_row(row, trials)

    async def list_optimizations(
        self, *, program: str | None = None, limit: int = 50
    ) -> list[OptimizationRecord]:
        check_positive("limit", limit)
        query = t_opt.select().order_by(t_opt.c.created_at.desc(), t_opt.c.id.desc()).limit(limit)
        if program is not None:
            query = query.where(t_opt.c.program == program)
        async with self._tx() as conn:
            return [_rows.optimization_from_row(r) for r in (await conn.execute(query)).mappings()]

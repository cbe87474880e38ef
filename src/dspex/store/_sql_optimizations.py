"""Optimization runs in SQL (the ``optimizations`` and ``optimization_trials`` tables)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from dspex.errors import LeaseLostError, NotFoundError, StorageError
from dspex.records import (
    OptimizationRecord,
    OptimizationStatus,
    OptimizationTrial,
    new_id,
    new_token,
)
from dspex.store import _rows
from dspex.store._rules import check_finishing, check_positive, json_copy
from dspex.store._sql_core import SqlCore
from dspex.store.optimizations import NewOptimization, OptimizationStore
from dspex.store.tables import optimization_trials as t_trials
from dspex.store.tables import optimizations as t_opt

__all__ = ["SqlOptimizations"]

# A run's columns but its request (its data sets), which only a resume reads.
_RUN = tuple(c for c in t_opt.c if c.name != "request")


class SqlOptimizations(SqlCore, OptimizationStore):
    """:class:`~dspex.store.optimizations.OptimizationStore` in SQLite or PostgreSQL."""

    async def create_optimization(self, new: NewOptimization) -> OptimizationRecord:
        if new.lease_seconds is not None:
            check_positive("lease_seconds", new.lease_seconds)
        now = self.clock()
        leased = new.worker_id is not None and new.lease_seconds is not None
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
            "created_at": now,
            "finished_at": None,
            "worker_id": new.worker_id,
            "lease_token": new_token() if leased else None,
            "lease_expires_at": (
                now + timedelta(seconds=new.lease_seconds or 0) if leased else None
            ),
            "attempts": 1,
            "request": json_copy(new.request, "optimization request") if new.request else None,
        }
        async with self._tx(write=True) as conn:
            # checked first: SQLite enforces no foreign key unless asked to
            await self._program(conn, new.program, new.program_version)
            row = (await conn.execute(t_opt.insert().values(**values).returning(*_RUN))).mappings()
            return _rows.optimization_from_row(row.one())

    async def get_optimization_request(self, optimization_id: str) -> dict[str, Any] | None:
        query = sa.select(t_opt.c.request).where(t_opt.c.id == optimization_id)
        async with self._tx() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFoundError(f"optimization {optimization_id!r} does not exist")
        request: dict[str, Any] | None = row[0]
        return request

    async def heartbeat_optimization(
        self, optimization_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        check_positive("lease_seconds", lease_seconds)
        stmt = (
            t_opt.update()
            .where(
                t_opt.c.id == optimization_id,
                t_opt.c.status == OptimizationStatus.RUNNING.value,
                t_opt.c.lease_token == lease_token,
            )
            .values(lease_expires_at=self.clock() + timedelta(seconds=lease_seconds))
        )
        async with self._tx(write=True) as conn:
            return bool((await conn.execute(stmt)).rowcount)

    async def claim_optimization(
        self, optimization_id: str, *, worker_id: str, lease_seconds: float
    ) -> OptimizationRecord | None:
        check_positive("lease_seconds", lease_seconds)
        now = self.clock()
        resumable = [s.value for s in OptimizationStatus if s.is_resumable]
        stmt = (
            t_opt.update()
            .where(
                t_opt.c.id == optimization_id,
                sa.or_(
                    t_opt.c.status.in_(resumable),
                    sa.and_(
                        t_opt.c.status == OptimizationStatus.RUNNING.value,
                        t_opt.c.lease_expires_at < now,
                    ),
                ),
            )
            .values(
                status=OptimizationStatus.RUNNING.value,
                error=None,
                finished_at=None,
                worker_id=worker_id,
                lease_token=new_token(),
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                attempts=t_opt.c.attempts + 1,
            )
            .returning(*_RUN)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is not None:
                return _rows.optimization_from_row(row)
            if not await self._exists(conn, t_opt, id=optimization_id):
                raise NotFoundError(f"optimization {optimization_id!r} does not exist")
        return None

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
        lease_token: str | None = None,
    ) -> OptimizationRecord:
        check_finishing(status)
        held = [t_opt.c.lease_token == lease_token] if lease_token is not None else []
        stmt = (
            t_opt.update()
            .where(
                t_opt.c.id == optimization_id,
                t_opt.c.status == OptimizationStatus.RUNNING.value,
                *held,
            )
            .values(
                status=status.value,
                baseline_score=baseline_score,
                score=score,
                result_version=result_version,
                stats=json_copy(stats or {}, "optimization stats"),
                error=error,
                finished_at=self.clock(),
                lease_token=None,
                lease_expires_at=None,
            )
            .returning(*_RUN)
        )
        async with self._tx(write=True) as conn:
            row = (await conn.execute(stmt)).mappings().first()
            if row is not None:
                return _rows.optimization_from_row(row)
            query = sa.select(t_opt.c.status).where(t_opt.c.id == optimization_id)
            current = (await conn.execute(query)).scalar()
        if current is None:
            raise NotFoundError(f"optimization {optimization_id!r} does not exist")
        if current == OptimizationStatus.RUNNING.value:
            raise LeaseLostError(
                f"optimization {optimization_id!r} is no longer held by this lease"
            )
        raise StorageError(f"optimization {optimization_id!r} already finished ({current})")

    async def get_optimization(self, optimization_id: str) -> OptimizationRecord:
        async with self._tx() as conn:
            row = (
                (await conn.execute(sa.select(*_RUN).where(t_opt.c.id == optimization_id)))
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
        query = sa.select(*_RUN).order_by(t_opt.c.created_at.desc(), t_opt.c.id.desc()).limit(limit)
        if program is not None:
            query = query.where(t_opt.c.program == program)
        async with self._tx() as conn:
            return [_rows.optimization_from_row(r) for r in (await conn.execute(query)).mappings()]

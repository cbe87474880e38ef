"""Program versions in SQL (the ``programs`` table)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dspex.errors import NotFoundError, ProgramStateError, StorageError
from dspex.records import ProgramRecord, ProgramStatus, PromotionRecord
from dspex.store import _rows
from dspex.store._rules import check_current
from dspex.store._sql_core import SqlCore
from dspex.store.programs import ProgramStore
from dspex.store.tables import programs as t_programs
from dspex.store.tables import promotions as t_promotions

__all__ = ["SqlPrograms"]

_PUT_PROGRAM_TRIES = 5


class SqlPrograms(SqlCore, ProgramStore):
    """:class:`~dspex.store.programs.ProgramStore` in SQLite or PostgreSQL."""

    async def put_program(self, name: str, spec: dict[str, Any], spec_hash: str) -> ProgramRecord:
        for _ in range(_PUT_PROGRAM_TRIES):
            try:
                return await self._put_program_once(name, spec, spec_hash)
            except StorageError as exc:
                # Another writer registered the same next version first: look again.
                if not isinstance(exc.__cause__, sa.exc.IntegrityError):
                    raise
        raise StorageError(f"could not register program {name!r}: too many concurrent writers")

    async def _put_program_once(
        self, name: str, spec: dict[str, Any], spec_hash: str
    ) -> ProgramRecord:
        async with self._tx(write=True, lock=True) as conn:
            latest = await self._latest_program(conn, name)
            if latest is not None and latest.spec_hash == spec_hash:
                return latest
            now = self.clock()
            values = {
                "name": name,
                "version": latest.version + 1 if latest else 1,
                "spec": spec,
                "spec_hash": spec_hash,
                "status": ProgramStatus.DRAFT.value,
                "error": None,
                "execution_count": 0,
                "success_count": 0,
                "failure_count": 0,
                "total_duration_ms": 0.0,
                "created_at": now,
                "updated_at": now,
            }
            result = await conn.execute(t_programs.insert().values(**values).returning(t_programs))
            return _rows.program_from_row(result.mappings().one())

    async def get_program(self, name: str, version: int | None = None) -> ProgramRecord:
        async with self._tx() as conn:
            return await self._program(conn, name, version)

    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramRecord]:
        query = t_programs.select().order_by(t_programs.c.name, t_programs.c.version)
        if not all_versions:
            newest = (
                sa.select(t_programs.c.name, sa.func.max(t_programs.c.version).label("v"))
                .group_by(t_programs.c.name)
                .subquery()
            )
            query = query.join(
                newest,
                sa.and_(newest.c.name == t_programs.c.name, newest.c.v == t_programs.c.version),
            )
        async with self._tx() as conn:
            return [_rows.program_from_row(r) for r in (await conn.execute(query)).mappings()]

    async def set_program_status(
        self,
        name: str,
        version: int,
        status: ProgramStatus,
        *,
        error: str | None = None,
        expected: ProgramStatus | None = None,
    ) -> ProgramRecord:
        async with self._tx(write=True, lock=True) as conn:
            current = await self._program(conn, name, version, lock=True)
            if expected is not None and current.status != expected:
                raise ProgramStateError(
                    f"program {name!r} v{version} is {current.status.value}, not {expected.value}",
                    status=current.status.value,
                )
            if not current.status.can_transition_to(status):
                raise ProgramStateError(
                    f"program {name!r} v{version} cannot go from {current.status.value}"
                    f" to {status.value}",
                    status=current.status.value,
                )
            stmt = (
                t_programs.update()
                .where(
                    t_programs.c.name == name,
                    t_programs.c.version == version,
                    t_programs.c.status == current.status.value,
                )
                .values(
                    status=status.value,
                    error=error if status is ProgramStatus.ERROR else None,
                    updated_at=self.clock(),
                )
                .returning(t_programs)
            )
            return _rows.program_from_row((await conn.execute(stmt)).mappings().one())

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
        async with self._tx(write=True, lock=True) as conn:
            # Every version's row is locked, so two promotions of one program take turns.
            query = t_programs.select().where(t_programs.c.name == name).with_for_update()
            versions = {r["version"] for r in (await conn.execute(query)).mappings()}
            if version not in versions:
                if not versions:
                    raise NotFoundError(f"program {name!r} does not exist")
                raise NotFoundError(f"program {name!r} has no version {version}")
            current = await self._current_version(conn, name)
            check_current(name, current, expected_current)
            values = {
                "program": name,
                "version": version,
                "previous_version": current,
                "forced": forced,
                "metric": metric,
                "devset_hash": devset_hash,
                "score": score,
                "previous_score": previous_score,
                "min_improvement": min_improvement,
                "promoted_by": promoted_by,
                "created_at": self.clock(),
            }
            stmt = t_promotions.insert().values(**values).returning(t_promotions)
            return _promotion((await conn.execute(stmt)).mappings().one())

    async def current_version(self, name: str) -> int | None:
        async with self._tx() as conn:
            return await self._current_version(conn, name)

    async def list_promotions(self, name: str, *, limit: int = 50) -> list[PromotionRecord]:
        query = (
            t_promotions.select()
            .where(t_promotions.c.program == name)
            .order_by(t_promotions.c.id.desc())
            .limit(limit)
        )
        async with self._tx() as conn:
            return [_promotion(r) for r in (await conn.execute(query)).mappings()]


def _promotion(row: sa.RowMapping) -> PromotionRecord:
    return PromotionRecord(
        id=row["id"],
        program=row["program"],
        version=row["version"],
        previous_version=row["previous_version"],
        forced=bool(row["forced"]),
        metric=row["metric"],
        devset_hash=row["devset_hash"],
        score=row["score"],
        previous_score=row["previous_score"],
        min_improvement=row["min_improvement"],
        promoted_by=row["promoted_by"],
        created_at=row["created_at"],
    )

"""Program versions in memory (the twin of :mod:`dspex.store._sql_programs`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dspex.errors import ProgramStateError
from dspex.records import ProgramRecord, ProgramStatus, PromotionRecord
from dspex.store._memory_tables import MemoryTables
from dspex.store._rules import check_current, json_copy
from dspex.store.base import Clock
from dspex.store.programs import ProgramStore

__all__ = ["MemoryPrograms"]


class MemoryPrograms(ProgramStore):
    """:class:`~dspex.store.programs.ProgramStore` over :class:`MemoryTables` (a mixin of
    :class:`~dspex.store.memory.MemoryStore`, which owns ``_db`` and ``clock``)."""

    _db: MemoryTables
    clock: Clock

    async def put_program(self, name: str, spec: dict[str, Any], spec_hash: str) -> ProgramRecord:
        self._db.check_open()
        versions = self._db.programs.setdefault(name, [])
        if versions and versions[-1].spec_hash == spec_hash:
            return versions[-1]
        now = self.clock()
        record = ProgramRecord(
            name=name,
            version=len(versions) + 1,
            spec=json_copy(spec, "program spec"),
            spec_hash=spec_hash,
            status=ProgramStatus.DRAFT,
            error=None,
            execution_count=0,
            success_count=0,
            failure_count=0,
            total_duration_ms=0.0,
            created_at=now,
            updated_at=now,
        )
        versions.append(record)
        return record

    async def get_program(self, name: str, version: int | None = None) -> ProgramRecord:
        self._db.check_open()
        return self._db.program(name, version)

    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramRecord]:
        self._db.check_open()
        out: list[ProgramRecord] = []
        for name in sorted(self._db.programs):
            versions = self._db.programs[name]
            out.extend(versions if all_versions else versions[-1:])
        return out

    async def set_program_status(
        self,
        name: str,
        version: int,
        status: ProgramStatus,
        *,
        error: str | None = None,
        expected: ProgramStatus | None = None,
    ) -> ProgramRecord:
        self._db.check_open()
        current = self._db.program(name, version)
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
        record = replace(
            current,
            status=status,
            error=error if status is ProgramStatus.ERROR else None,
            updated_at=self.clock(),
        )
        self._db.replace_program(record)
        return record

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
        db = self._db
        db.check_open()
        db.program(name, version)
        current = db.current_version(name)
        check_current(name, current, expected_current)
        record = PromotionRecord(
            id=db.next_id(),
            program=name,
            version=version,
            previous_version=current,
            forced=forced,
            metric=metric,
            devset_hash=devset_hash,
            score=score,
            previous_score=previous_score,
            min_improvement=min_improvement,
            promoted_by=promoted_by,
            created_at=self.clock(),
        )
        db.promotions.setdefault(name, []).append(record)
        return record

    async def current_version(self, name: str) -> int | None:
        self._db.check_open()
        return self._db.current_version(name)

    async def list_promotions(self, name: str, *, limit: int = 50) -> list[PromotionRecord]:
        self._db.check_open()
        return list(reversed(self._db.promotions.get(name, [])))[:limit]

"""Health and cleanup in SQL: bulk statements in short, locked transactions.

Every write here runs in a transaction that takes
its locks before it reads: on PostgreSQL the rows to change are selected ``FOR UPDATE SKIP
LOCKED`` (a concurrent reaper skips them and moves on), on SQLite the transaction starts with
``BEGIN IMMEDIATE`` (one writer at a time, so a second reaper sees the first one's result). Each
``UPDATE`` also repeats the condition that made a row a candidate, so a row that changed in
between is left alone either way.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from dspex.errors import StorageError
from dspex.records import ExecutionStatus, ProgramStatus
from dspex.store import _maintenance as _m
from dspex.store import migrations
from dspex.store._engine import SqliteTarget, sqlite_target
from dspex.store._rules import check_positive
from dspex.store._sql_core import SqlCore
from dspex.store.maintenance import MaintenanceStore
from dspex.store.tables import attempts as t_attempts
from dspex.store.tables import batches as t_batches
from dspex.store.tables import breakers as t_breakers
from dspex.store.tables import executions as t_exec
from dspex.store.tables import metadata
from dspex.store.tables import programs as t_programs
from dspex.store.tables import steps as t_steps

__all__ = ["SqlMaintenance"]

_RUNNING = ExecutionStatus.RUNNING.value
_PENDING = ExecutionStatus.PENDING.value
_FAILED = ExecutionStatus.FAILED.value
_TERMINAL = [s.value for s in ExecutionStatus if s.is_terminal]
_IN_CHUNK = 1000


class SqlMaintenance(SqlCore, MaintenanceStore):
    """:class:`~dspex.store.maintenance.MaintenanceStore` in SQLite or PostgreSQL
    (``schema_revision`` is the core's: initializing reads it too)."""

    def _skip_locked(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """Lock the selected rows on PostgreSQL, skipping rows another transaction holds."""
        if self.dialect == "postgresql":
            return query.with_for_update(skip_locked=True)
        return query

    # -- health --------------------------------------------------------------------------------

    async def ping(self) -> float:
        start = time.perf_counter()
        async with self._tx() as conn:
            await conn.execute(sa.text("SELECT 1"))
        return (time.perf_counter() - start) * 1000.0

    async def is_current(self) -> bool:
        return await self.schema_revision() == migrations.head_revision()

    async def probe_tables(self) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for table in metadata.sorted_tables:
            try:
                async with self._tx() as conn:
                    await conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1))
                out[table.name] = None
            except StorageError as exc:
                out[table.name] = exc.message
        return out

    async def open_executions(self, now: datetime | None = None) -> _m.OpenExecutions:
        c = t_exec.c
        cutoff = now or self.clock()
        expired = sa.and_(c.status == _RUNNING, c.lease_expires_at < cutoff)
        query = (
            sa.select(
                c.status,
                sa.func.count().label("n"),
                sa.func.sum(sa.case((expired, 1), else_=0)).label("expired"),
            )
            .where(c.status.in_([_PENDING, _RUNNING]))
            .group_by(c.status)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        counts = {row.status: (int(row.n), int(row.expired or 0)) for row in rows}
        running, expired_n = counts.get(_RUNNING, (0, 0))
        return _m.OpenExecutions(
            pending=counts.get(_PENDING, (0, 0))[0], running=running, expired=expired_n
        )

    async def execution_summaries(
        self, since: datetime, *, limit: int = 50_000
    ) -> list[_m.ExecutionSample]:
        check_positive("limit", limit)
        c = t_exec.c
        query = (
            sa.select(
                c.id,
                c.program,
                c.program_version,
                c.status,
                c.error_code,
                c.error_message,
                c.created_at,
                c.finished_at,
                c.duration_ms,
            )
            .where(c.created_at >= since)
            .order_by(c.created_at.desc(), c.id.desc())
            .limit(limit)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        return [
            _m.ExecutionSample(
                id=r.id,
                program=r.program,
                program_version=r.program_version,
                status=ExecutionStatus(r.status),
                error_code=r.error_code,
                error_message=r.error_message,
                created_at=r.created_at,
                finished_at=r.finished_at,
                duration_ms=r.duration_ms,
            )
            for r in rows
        ]

    # -- cleanup -------------------------------------------------------------------------------

    async def reap_expired_leases(
        self,
        now: datetime | None = None,
        *,
        attempt_cap: int = 3,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> _m.ReapResult:
        check_positive("attempt_cap", attempt_cap)
        check_positive("limit", limit)
        cutoff = now or self.clock()
        c = t_exec.c
        expired = sa.and_(c.status == _RUNNING, c.lease_expires_at < cutoff)
        pick = (
            sa.select(c.id, c.attempts, c.batch_id, c.program, c.program_version)
            .where(expired)
            .order_by(c.lease_expires_at, c.id)
        )
        result = _m.ReapResult()
        if dry_run:
            async with self._tx() as conn:
                rows = (await conn.execute(pick)).all()
            for row in rows:
                if _m.reap_decision(row.attempts, row.batch_id, attempt_cap):
                    result.requeued.append(row.id)
                else:
                    result.failed.append(row.id)
                    result.count_failed(row.batch_id)
            return result
        async with self._tx(write=True, lock=True) as conn:
            rows = (await conn.execute(self._skip_locked(pick.limit(limit)))).all()
            requeue = [r.id for r in rows if _m.reap_decision(r.attempts, r.batch_id, attempt_cap)]
            fail = [r for r in rows if not _m.reap_decision(r.attempts, r.batch_id, attempt_cap)]
            if requeue:
                stmt = (
                    t_exec.update()
                    .where(c.id.in_(requeue), expired)
                    .values(
                        status=_PENDING, worker_id=None, lease_token=None, lease_expires_at=None
                    )
                    .returning(c.id)
                )
                result.requeued.extend((await conn.execute(stmt)).scalars())
            for batch_item in (False, True):
                group = [r.id for r in fail if (r.batch_id is not None) is batch_item]
                if group:
                    message = _m.reap_message(batch_item=batch_item, attempt_cap=attempt_cap)
                    result.failed.extend(await self._fail(conn, group, expired, cutoff, message))
            reaped = set(result.failed)
            counted = [r for r in fail if r.id in reaped]
            for row in counted:
                result.count_failed(row.batch_id)
            await self._count_failures(conn, counted, result.failed_per_batch)
        return result

    async def _fail(
        self,
        conn: AsyncConnection,
        ids: Sequence[str],
        expired: sa.ColumnElement[bool],
        now: datetime,
        message: str,
    ) -> list[str]:
        c = t_exec.c
        stmt = (
            t_exec.update()
            .where(c.id.in_(ids), expired)
            .values(
                status=_FAILED,
                error_code=_m.LEASE_EXPIRED,
                error_message=message,
                finished_at=now,
                lease_token=None,
                lease_expires_at=None,
            )
            .returning(c.id)
        )
        return list((await conn.execute(stmt)).scalars())

    async def _count_failures(
        self, conn: AsyncConnection, rows: Sequence[Any], per_batch: dict[str, int]
    ) -> None:
        """Count reaped failures on their program versions and batches (one UPDATE per key)."""
        per_program: dict[tuple[str, int], int] = {}
        for row in rows:
            key = (row.program, row.program_version)
            per_program[key] = per_program.get(key, 0) + 1
        p = t_programs.c
        for (name, version), n in per_program.items():
            await conn.execute(
                t_programs.update()
                .where(p.name == name, p.version == version)
                .values(execution_count=p.execution_count + n, failure_count=p.failure_count + n)
            )
        b = t_batches.c
        for batch_id, n in per_batch.items():
            await conn.execute(
                t_batches.update().where(b.id == batch_id).values(failed=b.failed + n)
            )

    async def finalize_batches(
        self,
        *,
        dry_run: bool = False,
        limit: int = 1000,
        assume_failed: Mapping[str, int] | None = None,
    ) -> list[_m.BatchFinalization]:
        check_positive("limit", limit)
        b = t_batches.c
        c = t_exec.c
        items = sa.select(sa.func.count()).where(c.batch_id == b.id).scalar_subquery()
        pick = sa.select(b.id).where(b.status.in_(_m.OPEN_BATCH), items >= b.total)
        if not dry_run:
            # Only batches that can be finished, so a pass never stalls on busy ones.
            busy = sa.exists().where(c.batch_id == b.id, c.status.in_([_PENDING, _RUNNING]))
            pick = self._skip_locked(pick.where(~busy).order_by(b.created_at, b.id).limit(limit))
        async with self._tx(write=not dry_run, lock=not dry_run) as conn:
            chosen = list((await conn.execute(pick)).scalars())
            if not chosen:
                return []
            done = [
                final
                for final in await self._tally(conn, chosen, assume_failed or {})
                if not any(_m.is_open(s) for s in final[1])
            ]
            if dry_run:
                return [f for f, _ in done]
            now = self.clock()
            for final, _ in done:
                await conn.execute(
                    t_batches.update()
                    .where(b.id == final.batch_id, b.status.in_(_m.OPEN_BATCH))
                    .values(
                        status=final.status.value,
                        completed=final.completed,
                        failed=final.failed,
                        cancelled=final.cancelled,
                        finished_at=now,
                    )
                )
        return [f for f, _ in done]

    async def _tally(
        self, conn: AsyncConnection, batch_ids: list[str], assume_failed: Mapping[str, int]
    ) -> list[tuple[_m.BatchFinalization, dict[str, int]]]:
        """Each batch's executions per status, and how the batch would end with them."""
        c = t_exec.c
        counts: dict[str, dict[str, int]] = {bid: {} for bid in batch_ids}
        for start in range(0, len(batch_ids), _IN_CHUNK):
            tally = (
                sa.select(c.batch_id, c.status, sa.func.count().label("n"))
                .where(c.batch_id.in_(batch_ids[start : start + _IN_CHUNK]))
                .group_by(c.batch_id, c.status)
            )
            for row in (await conn.execute(tally)).all():
                counts[row.batch_id][row.status] = int(row.n)
        out = []
        for bid in batch_ids:
            seen = _m.assume(counts[bid], assume_failed.get(bid, 0))
            out.append((_m.finalization(bid, seen), seen))
        return out

    async def fail_stuck_programs(
        self, updated_before: datetime, *, dry_run: bool = False
    ) -> list[tuple[str, int]]:
        p = t_programs.c
        stuck = sa.and_(p.status == ProgramStatus.INITIALIZING.value, p.updated_at < updated_before)
        if dry_run:
            query = sa.select(p.name, p.version, p.updated_at).where(stuck)
            async with self._tx() as conn:
                rows = (await conn.execute(query)).all()
            return sorted((r.name, r.version) for r in rows)
        found = sa.select(p.name, p.version, p.updated_at).where(stuck)
        async with self._tx(write=True, lock=True) as conn:
            rows = (await conn.execute(self._skip_locked(found))).all()
            changed: list[tuple[str, int]] = []
            for row in rows:
                stmt = (
                    t_programs.update()
                    .where(p.name == row.name, p.version == row.version, stuck)
                    .values(
                        status=ProgramStatus.ERROR.value,
                        error=_m.stuck_message(row.updated_at),
                        updated_at=self.clock(),
                    )
                )
                if (await conn.execute(stmt)).rowcount == 1:
                    changed.append((row.name, row.version))
        return sorted(changed)

    async def delete_executions(
        self,
        created_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        check_positive("limit", limit)
        c = t_exec.c
        old = sa.and_(
            c.status.in_(_TERMINAL),
            c.created_at < created_before,
            sa.func.coalesce(c.finished_at, c.created_at) < created_before,
        )
        if dry_run:
            count = sa.select(sa.func.count()).select_from(t_exec).where(old)
            ids = sa.select(c.id).where(old).order_by(c.created_at, c.id).limit(max(sample, 1))
            async with self._tx() as conn:
                total = int((await conn.execute(count)).scalar_one())
                found = list((await conn.execute(ids)).scalars())
            return total, found[:sample]
        pick = sa.select(c.id).where(old).order_by(c.created_at, c.id).limit(limit)
        async with self._tx(write=True, lock=True) as conn:
            chosen = list((await conn.execute(self._skip_locked(pick))).scalars())
            if not chosen:
                return 0, []
            # Explicit deletes: cascades depend on SQLite's foreign_keys pragma being on.
            await conn.execute(t_steps.delete().where(t_steps.c.execution_id.in_(chosen)))
            await conn.execute(t_attempts.delete().where(t_attempts.c.execution_id.in_(chosen)))
            deleted = (await conn.execute(t_exec.delete().where(c.id.in_(chosen), old))).rowcount
        return deleted, chosen[:sample]

    async def stalled_batches(
        self, idle_since: datetime, *, now: datetime | None = None, fail: bool = False
    ) -> list[_m.StalledBatch]:
        moment = now or self.clock()
        b = t_batches.c
        c = t_exec.c
        live = sa.exists().where(
            c.batch_id == b.id, c.status == _RUNNING, c.lease_expires_at >= moment
        )
        # a batch whose driver renews its lease is being run (it may wait for held items)
        driverless = sa.or_(b.driver_expires_at.is_(None), b.driver_expires_at < moment)
        candidates = (
            sa.select(b.id)
            .where(b.status.in_(_m.OPEN_BATCH), b.created_at < idle_since, ~live, driverless)
            .order_by(b.created_at, b.id)
        )
        unfinished = sa.func.sum(sa.case((c.status.in_([_PENDING, _RUNNING]), 1), else_=0))
        items = sa.select(
            c.batch_id,
            sa.func.count().label("created"),
            unfinished.label("unfinished"),
            sa.func.max(c.created_at).label("created_at"),
            sa.func.max(c.started_at).label("started_at"),
            sa.func.max(c.finished_at).label("finished_at"),
        ).group_by(c.batch_id)
        async with self._tx(write=fail, lock=fail) as conn:
            # the candidates are locked (when failing them), their items tallied apart:
            # PostgreSQL locks no row of a grouped query
            ids = list(
                (
                    await conn.execute(self._skip_locked(candidates) if fail else candidates)
                ).scalars()
            )
            rows: list[Any] = []
            tallies: dict[str, Any] = {}
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                rows.extend(
                    (
                        await conn.execute(
                            sa.select(b.id, b.program, b.config, b.total, b.created_at).where(
                                b.id.in_(chunk)
                            )
                        )
                    ).all()
                )
                for found in (await conn.execute(items.where(c.batch_id.in_(chunk)))).all():
                    tallies[found.batch_id] = found
            rows.sort(key=lambda r: (r.created_at, r.id))
            stalled: list[_m.StalledBatch] = []
            for row in rows:
                tally = tallies.get(row.id)
                pending = int(tally.unfinished or 0) if tally is not None else 0
                missing = max(row.total - (int(tally.created) if tally is not None else 0), 0)
                times = [row.created_at]
                if tally is not None:
                    times += [tally.created_at, tally.started_at, tally.finished_at]
                last = max(t for t in times if t is not None)
                if not (pending or missing) or last >= idle_since:
                    continue
                stalled.append(
                    _m.StalledBatch(
                        row.id,
                        row.program,
                        _m.input_path(row.config),
                        pending,
                        missing,
                        last,
                    )
                )
            if fail and stalled:
                ids = [s.batch_id for s in stalled]
                for final, _ in await self._tally(conn, ids, {}):
                    await conn.execute(
                        t_batches.update()
                        .where(b.id == final.batch_id, b.status.in_(_m.OPEN_BATCH))
                        .values(
                            status=_FAILED,
                            completed=final.completed,
                            failed=final.failed,
                            cancelled=final.cancelled,
                            finished_at=self.clock(),
                        )
                    )
        return stalled

    async def delete_batches(
        self,
        finished_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        check_positive("limit", limit)
        b = t_batches.c
        old = sa.and_(
            b.status.notin_(_m.OPEN_BATCH),
            b.created_at < finished_before,
            sa.func.coalesce(b.finished_at, b.created_at) < finished_before,
        )
        if dry_run:
            count = sa.select(sa.func.count()).select_from(t_batches).where(old)
            ids = sa.select(b.id).where(old).order_by(b.created_at, b.id).limit(max(sample, 1))
            async with self._tx() as conn:
                total = int((await conn.execute(count)).scalar_one())
                found = list((await conn.execute(ids)).scalars())
            return total, found[:sample]
        pick = sa.select(b.id).where(old).order_by(b.created_at, b.id).limit(limit)
        async with self._tx(write=True, lock=True) as conn:
            chosen = list((await conn.execute(self._skip_locked(pick))).scalars())
            if not chosen:
                return 0, []
            c = t_exec.c
            items = sa.select(c.id).where(c.batch_id.in_(chosen)).scalar_subquery()
            await conn.execute(t_steps.delete().where(t_steps.c.execution_id.in_(items)))
            await conn.execute(t_attempts.delete().where(t_attempts.c.execution_id.in_(items)))
            await conn.execute(t_exec.delete().where(c.batch_id.in_(chosen)))
            deleted = (await conn.execute(t_batches.delete().where(b.id.in_(chosen), old))).rowcount
        return deleted, chosen[:sample]

    async def delete_breakers(self, keep: Collection[str], *, dry_run: bool = False) -> list[str]:
        k = t_breakers.c
        gone = sa.select(k.backend).where(k.backend.notin_(list(keep))).order_by(k.backend)
        if dry_run:
            async with self._tx() as conn:
                return list((await conn.execute(gone)).scalars())
        async with self._tx(write=True, lock=True) as conn:
            names = list((await conn.execute(self._skip_locked(gone))).scalars())
            if names:
                await conn.execute(t_breakers.delete().where(k.backend.in_(names)))
        return names

    async def reclaim_space(self, *, vacuum: bool = False) -> _m.SpaceReport | None:
        if self.dialect != "sqlite":
            return None  # PostgreSQL's autovacuum reuses and returns space on its own
        target = sqlite_target(self._url)
        if target.read_only or _in_memory(target.database):
            return None
        try:
            if self._write_lock is not None:
                async with self._write_lock:
                    return await asyncio.to_thread(_reclaim, target, vacuum, self._busy_ms)
            return await asyncio.to_thread(_reclaim, target, vacuum, self._busy_ms)
        except sqlite3.Error as exc:
            raise StorageError(f"database error while giving space back: {exc}") from exc


_AUTO_VACUUM = {0: "none", 1: "full", 2: "incremental"}


def _in_memory(database: str) -> bool:
    return database in ("", ":memory:") or "mode=memory" in database


def _reclaim(target: SqliteTarget, vacuum: bool, busy_ms: int) -> _m.SpaceReport:
    """Free pages back to the file system on a connection of its own (``VACUUM`` and a
    complete ``incremental_vacuum`` need one outside any transaction)."""
    conn = sqlite3.connect(
        target.database, uri=target.uri, isolation_level=None, timeout=busy_ms / 1000.0
    )
    try:

        def pragma(name: str) -> int:
            return int(conn.execute(f"PRAGMA {name}").fetchone()[0])

        page = pragma("page_size")
        mode = _AUTO_VACUUM.get(pragma("auto_vacuum"), "none")
        before = pragma("freelist_count")
        vacuumed = False
        if mode == "incremental":
            # executescript steps the pragma to its end (execute frees one page per step)
            conn.executescript("PRAGMA incremental_vacuum;")
        elif mode == "none" and vacuum:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")  # rebuilds the file: free pages go, the new mode holds
            mode, vacuumed = "incremental", True
        after = pragma("freelist_count")
        if mode == "incremental" and before != after:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks now, not later
        return _m.SpaceReport(
            auto_vacuum=mode,
            freed_bytes=max(before - after, 0) * page,
            free_bytes=after * page,
            vacuum_needed=mode == "none",
            vacuumed=vacuumed,
        )
    finally:
        conn.close()

"""The cleanup operation (DESIGN §3.5): the reaper that repairs what dead workers left behind.

In order, each step in short transactions of bounded size:

1. executions ``running`` under an expired lease (their worker died or hung): a batch item below
   the attempt cap goes back to ``pending`` (its next claim is the next attempt); any other is
   failed with code ``lease_expired``;
2. batches whose items all exist and are terminal but which are still open: finished, with
   counts recomputed from their executions;
3. batches whose driver died (open, no item running under a live lease, items still to run,
   nothing done for ``stalled_after``): failed, their unfinished items left as they are, with the
   command that resumes each (``dspex batch PROGRAM INPUT --resume ID``: the items' inputs are
   read from the input again);
4. program versions stuck ``initializing`` (the process initializing them died): ``error``;
5. with a retention period: terminal executions older than it, with their steps and attempts,
   and finished batches older than it, with their items, deleted in chunks; and the circuit
   breaker rows of backends no longer configured;
6. response cache entries past their TTL (``[cache] ttl``): deleted, retention or not;
7. after deletes (or with ``vacuum``), SQLite gives the freed pages back to the file
   system (incremental vacuum; an older file without it reports that a one-time ``VACUUM`` is
   needed, which ``vacuum`` runs).

A dry run changes nothing and reports exactly what a real run would change at that moment. Two
cleanups may run at once (from two processes): the store locks what it changes, so each
execution is re-queued or failed by one of them only.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from dspex.config import parse_age
from dspex.errors import ErrorDetail, ValidationError

if TYPE_CHECKING:
    from dspex.store._maintenance import StalledBatch
    from dspex.store.base import Store

__all__ = [
    "CleanupItems",
    "CleanupReport",
    "CleanupSpace",
    "cleanup",
    "parse_age",
    "resume_command",
]

_ID_LIMIT = 100
_CHUNK = 1000
_UNBOUNDED = 1_000_000_000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CleanupItems(_Model):
    """One category of a cleanup report.

    Attributes:
        count: how many were (or, in a dry run, would be) changed.
        ids: the first of them (at most 100): execution ids, batch ids, or ``name vN``.
    """

    count: int = 0
    ids: list[str] = []


class CleanupSpace(_Model):
    """Space given back to the file system (SQLite only).

    Attributes:
        auto_vacuum: the database's mode: ``none``, ``full`` or ``incremental``.
        freed_bytes: bytes given back by this cleanup.
        free_bytes: unused bytes still inside the file.
        vacuum_needed: the file predates incremental vacuum: run ``dspex cleanup --vacuum``
            once (it rebuilds the file, needing free disk about its size).
        vacuumed: this cleanup ran that ``VACUUM``.
    """

    auto_vacuum: str
    freed_bytes: int
    free_bytes: int
    vacuum_needed: bool
    vacuumed: bool


class CleanupReport(_Model):
    """What :func:`cleanup` did, or would do in a dry run.

    Attributes:
        dry_run: nothing was changed.
        requeued: expired executions put back to ``pending``.
        lease_expired: expired executions failed with code ``lease_expired``.
        batches_finalized: open batches whose items were all terminal, now finished.
        batches_stalled: open batches whose driver died, now ``failed`` (resumable).
        resume_commands: how to run the rest of each stalled batch.
        programs_errored: program versions stuck ``initializing``, now ``error``.
        executions_deleted: executions past the retention period, deleted.
        batches_deleted: finished batches past the retention period, deleted with their items.
        breakers_deleted: circuit-breaker rows of backends no longer configured, deleted.
        cache_expired: response cache entries past their TTL, deleted (a count, no ids).
        space: what giving space back did (``None``: not attempted, or not SQLite).
        attempt_cap: the attempt cap that was applied.
        retention_cutoff: executions created before this were past retention (``None``: no
            retention given, nothing deleted).
        duration_ms: how long the cleanup took.
    """

    dry_run: bool
    requeued: CleanupItems
    lease_expired: CleanupItems
    batches_finalized: CleanupItems
    batches_stalled: CleanupItems = CleanupItems()
    resume_commands: list[str] = []
    programs_errored: CleanupItems
    executions_deleted: CleanupItems
    batches_deleted: CleanupItems = CleanupItems()
    breakers_deleted: CleanupItems = CleanupItems()
    cache_expired: CleanupItems = CleanupItems()
    space: CleanupSpace | None = None
    attempt_cap: int
    retention_cutoff: datetime | None
    duration_ms: float

    @property
    def total(self) -> int:
        """How many things changed (or would change) in all."""
        return (
            self.requeued.count
            + self.lease_expired.count
            + self.batches_finalized.count
            + self.batches_stalled.count
            + self.programs_errored.count
            + self.executions_deleted.count
            + self.batches_deleted.count
            + self.breakers_deleted.count
            + self.cache_expired.count
        )


@dataclass(slots=True)
class _Tally:
    count: int = 0
    ids: list[str] | None = None

    def add(self, ids: list[str], count: int | None = None) -> None:
        kept = self.ids if self.ids is not None else []
        kept.extend(ids[: max(0, _ID_LIMIT - len(kept))])
        self.ids = kept
        self.count += len(ids) if count is None else count

    def items(self) -> CleanupItems:
        return CleanupItems(count=self.count, ids=list(self.ids or []))


def resume_command(stalled: StalledBatch) -> str:
    """How to run the rest of a stalled batch (its items' inputs are read from its input)."""
    where = stalled.input or "INPUT.jsonl"
    return f"dspex batch {stalled.program} {where} --resume {stalled.batch_id}"


def _seconds(name: str, value: float | timedelta | None, *, zero: bool = False) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not (seconds >= 0 if zero else seconds > 0):
        what = "at least zero" if zero else "positive"
        raise ValidationError(
            f"{name} must be {what}:", [ErrorDetail(name, "not_positive", f"got {value}")]
        )
    return seconds


async def cleanup(
    store: Store,
    *,
    dry_run: bool = False,
    older_than: timedelta | float | None = None,
    attempt_cap: int = 3,
    stuck_initializing_after: timedelta | float = 600.0,
    stalled_after: timedelta | float = 600.0,
    backends: Collection[str] | None = None,
    vacuum: bool = False,
    chunk: int = _CHUNK,
    now: datetime | None = None,
) -> CleanupReport:
    """Repair what dead workers left behind (see the module docstring).

    Args:
        store: the store to clean.
        dry_run: report what would change, change nothing.
        older_than: retention: delete terminal executions created longer ago than this
            (a ``timedelta`` or seconds; ``0`` deletes every terminal execution). ``None`` keeps
            every execution.
        attempt_cap: an expired batch item that already had this many attempts is failed
            instead of re-queued.
        stuck_initializing_after: a version ``initializing`` for longer than this (seconds or
            ``timedelta``) is moved to ``error``.
        stalled_after: an open batch with nothing running under a live lease and nothing done
            for this long (seconds or ``timedelta``) lost its driver and is failed.
        backends: the configured backend names: with a retention period, the breaker rows of
            any other backend are deleted (``None``: breaker rows are kept).
        vacuum: run the one-time ``VACUUM`` a SQLite file without incremental vacuum needs.
        chunk: rows changed per transaction.
        now: the time to judge leases and ages by (default: the store's clock).

    Raises:
        ValidationError: a negative age, or a non-positive ``attempt_cap``,
            ``stuck_initializing_after``, ``stalled_after`` or ``chunk`` (nothing touched).
    """
    retention = _seconds("older_than", older_than, zero=True)
    stuck_after = _seconds("stuck_initializing_after", stuck_initializing_after)
    idle_after = _seconds("stalled_after", stalled_after)
    assert stuck_after is not None
    assert idle_after is not None
    for name, value in (("attempt_cap", attempt_cap), ("chunk", chunk)):
        if value < 1:
            raise ValidationError(
                f"{name} must be at least 1:", [ErrorDetail(name, "too_small", f"got {value}")]
            )
    t0 = time.perf_counter()
    moment = now or store.clock()
    requeued, failed, batches, programs, deleted = _Tally(), _Tally(), _Tally(), _Tally(), _Tally()
    stalled_tally, batches_deleted, breakers_deleted = _Tally(), _Tally(), _Tally()

    assume: dict[str, int] = {}
    while True:
        reaped = await store.reap_expired_leases(
            moment, attempt_cap=attempt_cap, limit=chunk, dry_run=dry_run
        )
        requeued.add(reaped.requeued)
        failed.add(reaped.failed)
        for batch_id, n in reaped.failed_per_batch.items():
            assume[batch_id] = assume.get(batch_id, 0) + n
        if dry_run or reaped.total < chunk:
            break

    while True:
        finished = await store.finalize_batches(
            dry_run=dry_run,
            limit=_UNBOUNDED if dry_run else chunk,
            assume_failed=assume if dry_run else None,
        )
        batches.add([f.batch_id for f in finished])
        if dry_run or len(finished) < chunk:
            break

    stalled = await store.stalled_batches(
        moment - timedelta(seconds=idle_after), now=moment, fail=not dry_run
    )
    stalled_tally.add([s.batch_id for s in stalled])
    resume = [resume_command(s) for s in stalled[:_ID_LIMIT]]

    stuck = await store.fail_stuck_programs(
        moment - timedelta(seconds=stuck_after), dry_run=dry_run
    )
    programs.add([f"{name} v{version}" for name, version in stuck])

    cutoff = moment - timedelta(seconds=retention) if retention is not None else None
    if cutoff is not None:
        while True:
            count, ids = await store.delete_executions(
                cutoff, limit=chunk, dry_run=dry_run, sample=_ID_LIMIT
            )
            deleted.add(ids, count)
            if dry_run or count < chunk:
                break
        while True:
            count, ids = await store.delete_batches(
                cutoff, limit=chunk, dry_run=dry_run, sample=_ID_LIMIT
            )
            batches_deleted.add(ids, count)
            if dry_run or count < chunk:
                break
        if backends is not None:
            breakers_deleted.add(await store.delete_breakers(backends, dry_run=dry_run))

    cache_expired = await store.clear_cache(expired=True, dry_run=dry_run)

    space = None
    if not dry_run and (cutoff is not None or vacuum or cache_expired):
        given = await store.reclaim_space(vacuum=vacuum)
        if given is not None:
            space = CleanupSpace(
                auto_vacuum=given.auto_vacuum,
                freed_bytes=given.freed_bytes,
                free_bytes=given.free_bytes,
                vacuum_needed=given.vacuum_needed,
                vacuumed=given.vacuumed,
            )

    return CleanupReport(
        dry_run=dry_run,
        requeued=requeued.items(),
        lease_expired=failed.items(),
        batches_finalized=batches.items(),
        batches_stalled=stalled_tally.items(),
        resume_commands=resume,
        programs_errored=programs.items(),
        executions_deleted=deleted.items(),
        batches_deleted=batches_deleted.items(),
        breakers_deleted=breakers_deleted.items(),
        cache_expired=CleanupItems(count=cache_expired),
        space=space,
        attempt_cap=attempt_cap,
        retention_cutoff=cutoff,
        duration_ms=round((time.perf_counter() - t0) * 1000.0, 3),
    )

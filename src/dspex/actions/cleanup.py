"""The cleanup operation (DESIGN §3.5): the reaper that repairs what dead workers left behind.

In order, each step in short transactions of bounded size:

1. executions ``running`` under an expired lease (their worker died or hung): a batch item below
   the attempt cap goes back to ``pending`` (its next claim is the next attempt); any other is
   failed with code ``lease_expired``;
2. batches whose items all exist and are terminal but which are still open: finished, with
   counts recomputed from their executions;
3. program versions stuck ``initializing`` (the process initializing them died): ``error``;
4. with a retention period: terminal executions older than it, with their steps and attempts,
   deleted in chunks.

A dry run changes nothing and reports exactly what a real run would change at that moment. Two
cleanups may run at once (from two processes): the store locks what it changes, so each
execution is re-queued or failed by one of them only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from dspex.errors import ErrorDetail, ValidationError

if TYPE_CHECKING:
    from dspex.store.base import Store

__all__ = ["CleanupItems", "CleanupReport", "cleanup", "parse_age"]

_ID_LIMIT = 100
_CHUNK = 1000
_UNBOUNDED = 1_000_000_000
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


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


class CleanupReport(_Model):
    """What :func:`cleanup` did, or would do in a dry run.

    Attributes:
        dry_run: nothing was changed.
        requeued: expired executions put back to ``pending``.
        lease_expired: expired executions failed with code ``lease_expired``.
        batches_finalized: open batches whose items were all terminal, now finished.
        programs_errored: program versions stuck ``initializing``, now ``error``.
        executions_deleted: executions past the retention period, deleted.
        attempt_cap: the attempt cap that was applied.
        retention_cutoff: executions created before this were past retention (``None``: no
            retention given, nothing deleted).
        duration_ms: how long the cleanup took.
    """

    dry_run: bool
    requeued: CleanupItems
    lease_expired: CleanupItems
    batches_finalized: CleanupItems
    programs_errored: CleanupItems
    executions_deleted: CleanupItems
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
            + self.programs_errored.count
            + self.executions_deleted.count
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


def parse_age(text: str) -> timedelta:
    """A retention age like ``30d``, ``12h``, ``90m``, ``2w`` or ``45s`` (``0d``: no age at all,
    so every finished execution is past it).

    Raises:
        ValidationError: not a number of at least zero followed by one of s, m, h, d, w.
    """
    raw = text.strip().lower()
    unit = _AGE_UNITS.get(raw[-1:]) if raw else None
    try:
        amount = float(raw[:-1]) if unit is not None else float("nan")
    except ValueError:
        amount = float("nan")
    if unit is None or not amount >= 0 or amount == float("inf"):
        raise ValidationError(
            f"not an age: {text!r} (use a number and a unit, like 30d, 12h or 90m)",
            [ErrorDetail("older_than", "invalid", "expected e.g. 30d, 12h, 90m")],
        )
    return timedelta(seconds=amount * unit)


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
        chunk: rows changed per transaction.
        now: the time to judge leases and ages by (default: the store's clock).

    Raises:
        ValidationError: a negative age, or a non-positive ``attempt_cap``,
            ``stuck_initializing_after`` or ``chunk`` (nothing touched).
    """
    retention = _seconds("older_than", older_than, zero=True)
    stuck_after = _seconds("stuck_initializing_after", stuck_initializing_after)
    assert stuck_after is not None
    for name, value in (("attempt_cap", attempt_cap), ("chunk", chunk)):
        if value < 1:
            raise ValidationError(
                f"{name} must be at least 1:", [ErrorDetail(name, "too_small", f"got {value}")]
            )
    t0 = time.perf_counter()
    moment = now or store.clock()
    requeued, failed, batches, programs, deleted = _Tally(), _Tally(), _Tally(), _Tally(), _Tally()

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

    return CleanupReport(
        dry_run=dry_run,
        requeued=requeued.items(),
        lease_expired=failed.items(),
        batches_finalized=batches.items(),
        programs_errored=programs.items(),
        executions_deleted=deleted.items(),
        attempt_cap=attempt_cap,
        retention_cutoff=cutoff,
        duration_ms=round((time.perf_counter() - t0) * 1000.0, 3),
    )

"""Records and rules shared by the maintenance methods of every store (health and cleanup).

The reaper's decisions live here, once, so that the in-memory twin and the SQL store cannot
disagree about which expired execution is re-queued and which one is failed, or about the status a
finished batch ends in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dspex.records import BatchStatus, ExecutionStatus

__all__ = [
    "LEASE_EXPIRED",
    "OPEN_BATCH",
    "BatchFinalization",
    "ExecutionSample",
    "OpenExecutions",
    "ReapResult",
    "SpaceReport",
    "StalledBatch",
    "assume",
    "batch_outcome",
    "count_statuses",
    "finalization",
    "input_path",
    "is_open",
    "reap_decision",
    "reap_message",
    "stuck_message",
]

LEASE_EXPIRED = "lease_expired"
"""The error code of an execution failed by the reaper."""

_OPEN = (ExecutionStatus.PENDING.value, ExecutionStatus.RUNNING.value)
OPEN_BATCH = (BatchStatus.PENDING.value, BatchStatus.RUNNING.value)


@dataclass(frozen=True, slots=True)
class ReapResult:
    """What one reaper pass did (or, in a dry run, would do) to executions with expired leases.

    Attributes:
        requeued: ids put back to ``pending`` (lease cleared) so a worker can claim them again.
        failed: ids failed with code ``lease_expired``.
        failed_per_batch: how many of ``failed`` each batch has.
    """

    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    failed_per_batch: dict[str, int] = field(default_factory=dict)

    def count_failed(self, batch_id: str | None) -> None:
        if batch_id is not None:
            self.failed_per_batch[batch_id] = self.failed_per_batch.get(batch_id, 0) + 1

    @property
    def total(self) -> int:
        return len(self.requeued) + len(self.failed)


@dataclass(frozen=True, slots=True)
class BatchFinalization:
    """A batch whose items are all terminal, with the status and counts it was given."""

    batch_id: str
    status: BatchStatus
    completed: int
    failed: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class StalledBatch:
    """An open batch whose driver is gone: no item runs under a live lease, no driver holds a
    live lease on it, some item is still to run (pending, or never created), and nothing
    happened since before the idle cutoff.

    Attributes:
        batch_id: the batch.
        program: its program.
        input: where its items were read from (``config["input"]``), for the resume command.
        pending: items not yet finished (pending or running under an expired lease).
        missing: items never created (the driver died before reaching them).
        last_activity: when its last item was created, started or finished (or the batch
            created).
    """

    batch_id: str
    program: str
    input: str | None
    pending: int
    missing: int
    last_activity: datetime


def input_path(config: Any) -> str | None:
    """The input file a batch's config names (``{"input": {"kind": "jsonl", "path": …}}``)."""
    source = config.get("input") if isinstance(config, Mapping) else None
    if isinstance(source, Mapping):
        source = source.get("path")
    return source if isinstance(source, str) else None


@dataclass(frozen=True, slots=True)
class SpaceReport:
    """What giving space back to the file system did (SQLite; PostgreSQL's autovacuum does it).

    Attributes:
        auto_vacuum: the database's mode: ``none``, ``full`` or ``incremental``.
        freed_bytes: bytes given back by this call.
        free_bytes: unused bytes still inside the file.
        vacuum_needed: the file was made without incremental vacuum, so space comes back only
            with a one-time ``VACUUM`` (``dspex cleanup --vacuum``), which also switches it on.
        vacuumed: this call ran that ``VACUUM``.
    """

    auto_vacuum: str
    freed_bytes: int
    free_bytes: int
    vacuum_needed: bool = False
    vacuumed: bool = False


@dataclass(frozen=True, slots=True)
class OpenExecutions:
    """Executions not yet finished: waiting, running, and running with an expired lease."""

    pending: int = 0
    running: int = 0
    expired: int = 0


@dataclass(frozen=True, slots=True)
class ExecutionSample:
    """The columns of an execution that health statistics need (no JSON payloads)."""

    id: str
    program: str
    program_version: int
    status: ExecutionStatus
    error_code: str | None
    error_message: str | None
    created_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


def reap_decision(attempts: int, batch_id: str | None, attempt_cap: int) -> bool:
    """Whether an execution whose lease expired is re-queued (``True``) or failed (``False``).

    Only batch items are re-queued: a batch runner (or a resumed batch) claims pending items
    again. A stand-alone execution's caller is gone with its worker and nothing would ever claim
    it, so it is failed at once instead of waiting ``pending`` forever. An execution that already
    used ``attempt_cap`` attempts is failed either way.
    """
    return batch_id is not None and attempts < attempt_cap


def reap_message(*, batch_item: bool, attempt_cap: int) -> str:
    """The error message of an execution the reaper failed."""
    if batch_item:  # only a batch item past its attempt cap is failed
        return (
            f"the worker's lease expired and the attempt cap ({attempt_cap}) was reached;"
            " the worker died or stopped renewing its lease"
        )
    return (
        "the worker's lease expired (the worker died or stopped renewing its lease);"
        " a stand-alone execution is not re-run"
    )


def batch_outcome(completed: int, failed: int, cancelled: int) -> BatchStatus:
    """The final status of a batch from its items: any failure fails it, then any cancel."""
    if failed:
        return BatchStatus.FAILED
    if cancelled:
        return BatchStatus.CANCELLED
    return BatchStatus.COMPLETED


def finalization(batch_id: str, counts: dict[str, int]) -> BatchFinalization:
    """How a batch ends, from the count of its executions in each status."""
    completed = counts.get(ExecutionStatus.COMPLETED.value, 0)
    failed = counts.get(ExecutionStatus.FAILED.value, 0)
    cancelled = counts.get(ExecutionStatus.CANCELLED.value, 0)
    return BatchFinalization(
        batch_id=batch_id,
        status=batch_outcome(completed, failed, cancelled),
        completed=completed,
        failed=failed,
        cancelled=cancelled,
    )


def stuck_message(since: datetime) -> str:
    """The error recorded on a program version the reaper moved out of ``initializing``."""
    return (
        f"initialization did not finish (initializing since {since.isoformat()});"
        " the process running it probably died: initialize it again"
    )


def assume(counts: dict[str, int], failed: int) -> dict[str, int]:
    """``counts`` with ``failed`` running items counted as failed (a dry run's view)."""
    if not failed:
        return counts
    out = dict(counts)
    out[ExecutionStatus.RUNNING.value] = out.get(ExecutionStatus.RUNNING.value, 0) - failed
    out[ExecutionStatus.FAILED.value] = out.get(ExecutionStatus.FAILED.value, 0) + failed
    return {k: v for k, v in out.items() if v > 0}


def count_statuses(statuses: Iterable[str]) -> dict[str, int]:
    """How many of each status (a helper for the stores' batch aggregation)."""
    out: dict[str, int] = {}
    for status in statuses:
        out[status] = out.get(status, 0) + 1
    return out


def is_open(status: str) -> bool:
    """Whether an execution status is not terminal."""
    return status in _OPEN

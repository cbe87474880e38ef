"""Rules every store implementation applies the same way: argument checks, page cursors, claims.

Kept apart from the interfaces so the in-memory twin and the SQL store cannot disagree about them.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from dspex.errors import ErrorDetail, ProgramStateError, StorageError, ValidationError
from dspex.records import ExecutionStatus, OptimizationStatus, ProgramRecord, ProgramStatus

__all__ = [
    "CANCELLED_CODE",
    "CANCELLED_MESSAGE",
    "check_current",
    "check_positive",
    "check_prefix",
    "check_startable",
    "check_terminal",
    "claimable",
    "counts_toward_program",
    "decode_cursor",
    "encode_cursor",
    "json_copy",
]

CANCELLED_CODE = "cancelled"
"""The error code of an execution cancelled (at once, or by its worker) on request."""
CANCELLED_MESSAGE = "the execution was cancelled"


def encode_cursor(created_at: datetime, execution_id: str) -> str:
    """An opaque page cursor: the sort key of the last item returned."""
    raw = json.dumps([created_at.isoformat(), execution_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The sort key inside a cursor made by :func:`encode_cursor`.

    Raises:
        ValidationError: the cursor was not made by :func:`encode_cursor`.
    """
    try:
        stamp, execution_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not isinstance(execution_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValidationError(
            "invalid page cursor:", [ErrorDetail("cursor", "invalid", "not a page cursor")]
        ) from exc
    return created_at, execution_id


def check_positive(name: str, value: float) -> None:
    """Reject a non-positive duration or limit early, before touching the database."""
    if value <= 0:
        raise ValidationError(
            f"{name} must be positive:", [ErrorDetail(name, "not_positive", f"got {value}")]
        )


def check_prefix(prefix: str, limit: int) -> None:
    """Reject an empty id prefix or a non-positive limit (see
    :meth:`~dspex.store.base.Store.match_ids`)."""
    if not prefix:
        raise ValidationError(
            "an id prefix cannot be empty:", [ErrorDetail("prefix", "empty", "give an id prefix")]
        )
    check_positive("limit", limit)


def check_startable(
    record: ProgramRecord, default: ProgramRecord | None, *, require_ready: bool
) -> None:
    """Refuse to start an execution of a version that is not ready, or not the default one.

    ``default`` is the version used when none is named (the current version, else the newest),
    given when the execution asked for it.

    Raises:
        ProgramStateError: naming the version's status (or the default version).
    """
    if require_ready and record.status is not ProgramStatus.READY:
        raise ProgramStateError(
            f"program {record.name!r} v{record.version} is {record.status.value}, not ready",
            status=record.status.value,
        )
    if default is not None and default.version != record.version:
        raise ProgramStateError(
            f"program {record.name!r} v{record.version} is not the current version"
            f" (v{default.version} is, {default.status.value})",
            status=default.status.value,
        )


def check_current(name: str, current: int | None, expected: int | None) -> None:
    """Refuse to promote when the current version is not the one the caller read.

    Raises:
        ProgramStateError: another promotion moved the pointer first.
    """
    if current != expected:
        now = "none" if current is None else f"v{current}"
        raise ProgramStateError(
            f"program {name!r}: the current version changed to {now} meanwhile; try again",
            status="current_changed",
        )


def check_terminal(status: ExecutionStatus) -> None:
    """Finishing requires a terminal status."""
    if not status.is_terminal:
        raise ValidationError(
            "an execution can only finish as completed, failed or cancelled:",
            [ErrorDetail("status", "not_terminal", f"got {status.value}")],
        )


def counts_toward_program(status: ExecutionStatus, bump_counters: bool) -> bool:
    """Cancelled executions say nothing about a program's health, so they are not counted."""
    return bump_counters and status in (ExecutionStatus.COMPLETED, ExecutionStatus.FAILED)


def claimable(
    status: ExecutionStatus, lease_expires_at: datetime | None, now: datetime, retry_failed: bool
) -> bool:
    """Whether a batch item in this state may be (re)started by
    :meth:`~dspex.store.batches.BatchStore.claim_batch_items`."""
    if status is ExecutionStatus.RUNNING:
        return lease_expires_at is not None and lease_expires_at < now
    if status is ExecutionStatus.FAILED:
        return retry_failed
    return status in (ExecutionStatus.PENDING, ExecutionStatus.CANCELLED)


def json_copy(value: Any, what: str) -> Any:
    """A deep copy through JSON, exactly what a database round trip yields.

    Raises:
        StorageError: the value is not JSON-serialisable.
    """
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} is not JSON-serialisable: {exc}") from exc


def check_finishing(status: OptimizationStatus) -> None:
    """Reject finishing an optimization run with a status that does not end it."""
    if not status.is_terminal:
        raise ValidationError(
            "an optimization run finishes as completed, failed or interrupted:",
            [ErrorDetail("status", "not_terminal", f"got {status.value}")],
        )

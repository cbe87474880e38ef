"""The :class:`Store` interface: everything dspex persists, behind one async contract.

Two implementations honour it: :class:`dspex.store.memory.MemoryStore` (the in-memory twin used by
unit tests) and :class:`dspex.store.sql.SqlStore` (SQLite and PostgreSQL through SQLAlchemy). One
contract test suite runs against all of them, so the twin cannot drift from the real thing.

Rules every implementation keeps:

- Lookups of a missing thing raise :class:`dspex.errors.NotFoundError`.
- Every write to an execution after it was claimed is conditional on its lease token; a worker
  that lost its lease gets :class:`dspex.errors.LeaseLostError` and changes nothing.
- Counters are incremented atomically; concurrent bumps never lose a count.
- Each method is one short transaction, so a failure record is never rolled back with the work
  that failed.
- Any other database failure surfaces as :class:`dspex.errors.StorageError`.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

from dspex.errors import ErrorDetail, ProgramStateError, StorageError, ValidationError
from dspex.records import (
    AttemptRecord,
    BatchRecord,
    BatchStatus,
    BreakerRecord,
    ExecutionFilter,
    ExecutionRecord,
    ExecutionRecordPage,
    ExecutionStatus,
    FinishRequest,
    ProgramRecord,
    ProgramStatus,
    SignatureRecord,
    StepRecord,
    UsageMap,
    utc_now,
)
from dspex.store import _maintenance as _m

__all__ = ["Clock", "IdKind", "Store", "decode_cursor", "encode_cursor"]

Clock = Callable[[], datetime]

IdKind = Literal["execution", "batch"]
"""What :meth:`Store.match_ids` looks up: execution ids or batch ids."""


class Store(abc.ABC):
    """Persistence for signatures, programs, executions (with steps and attempts) and batches.

    Use it as an async context manager (``initialize`` on enter, ``close`` on exit) or call the
    two yourself. ``clock`` returns the current UTC time; tests inject one to move leases forward
    without sleeping.
    """

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self.clock = clock

    async def __aenter__(self) -> Self:
        await self.initialize()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Where the data lives, safe to print (passwords masked)."""

    @abc.abstractmethod
    async def initialize(self) -> None:
        """Make the store ready: bring the schema to the newest revision where allowed."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. The store is unusable afterwards."""

    @abc.abstractmethod
    async def ping(self) -> float:
        """Round-trip a trivial query; returns the latency in milliseconds."""

    @abc.abstractmethod
    async def schema_revision(self) -> str | None:
        """The schema revision the database is at (``None`` for an empty database)."""

    @abc.abstractmethod
    async def is_current(self) -> bool:
        """Whether the schema is at the newest revision this code knows."""

    # -- signatures ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_signature(self, name: str, spec: dict[str, Any]) -> SignatureRecord:
        """Store (or replace) the named signature's spec."""

    @abc.abstractmethod
    async def get_signature(self, name: str) -> SignatureRecord:
        """The named signature, or :class:`NotFoundError`."""

    @abc.abstractmethod
    async def list_signatures(self) -> list[SignatureRecord]:
        """Every signature, by name."""

    # -- programs ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def put_program(self, name: str, spec: dict[str, Any], spec_hash: str) -> ProgramRecord:
        """Register a program spec.

        Returns the newest version unchanged when its ``spec_hash`` equals ``spec_hash``;
        otherwise creates the next version (starting at 1) in ``draft`` status.
        """

    @abc.abstractmethod
    async def get_program(self, name: str, version: int | None = None) -> ProgramRecord:
        """One version of a program (the newest when ``version`` is ``None``)."""

    @abc.abstractmethod
    async def list_programs(self, *, all_versions: bool = False) -> list[ProgramRecord]:
        """The newest version of every program (or every version), by name then version."""

    @abc.abstractmethod
    async def set_program_status(
        self,
        name: str,
        version: int,
        status: ProgramStatus,
        *,
        error: str | None = None,
        expected: ProgramStatus | None = None,
    ) -> ProgramRecord:
        """Move a program version to ``status`` (a legal lifecycle step only).

        Args:
            name: the program.
            version: the version to change.
            status: the new status.
            error: why, when ``status`` is ``error`` (cleared for any other status).
            expected: change only if the current status is this one (compare-and-set).

        Raises:
            ProgramStateError: the transition is not allowed, or the status is not ``expected``
                (including when another writer changed it first).
            NotFoundError: no such program version.
        """

    @abc.abstractmethod
    async def bump_program_counters(
        self, name: str, version: int, *, succeeded: bool, duration_ms: float
    ) -> None:
        """Atomically count one finished execution of a program version."""

    # -- executions ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        *,
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
    ) -> ExecutionRecord:
        """Create a ``pending`` execution (a new :func:`~dspex.records.new_id` unless given)."""

    async def start_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        *,
        worker_id: str,
        lease_seconds: float,
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
        require_ready: bool = False,
        require_latest: bool = False,
    ) -> ExecutionRecord:
        """Create an execution already claimed by ``worker_id``: ``running`` under a fresh lease.

        The returned record carries the ``lease_token`` every later write must present. The
        built-in stores do this in ONE transaction, program checks included; this default
        (check, create, then claim) exists so that other implementations stay correct without.

        Args:
            program: the program name.
            program_version: the version to run.
            inputs: the (validated) inputs.
            worker_id: who holds the lease.
            lease_seconds: how long the lease lasts before a heartbeat must renew it.
            execution_id: the id to use (default: a new :func:`~dspex.records.new_id`).
            batch_id: the batch it belongs to.
            batch_index: its position in the batch.
            require_ready: create it only if the version is ``ready`` (checked in the same
                transaction, so a cached program record cannot run an archived version).
            require_latest: create it only if no newer version of the program exists.

        Raises:
            NotFoundError: the program version (or batch) does not exist.
            ProgramStateError: a ``require_*`` condition does not hold; nothing was created.
            ValidationError: ``lease_seconds`` is not positive.
        """
        check_positive("lease_seconds", lease_seconds)
        if require_ready or require_latest:
            check_startable(
                await self.get_program(program, program_version),
                await self.get_program(program) if require_latest else None,
                require_ready=require_ready,
            )
        record = await self.create_execution(
            program,
            program_version,
            inputs,
            execution_id=execution_id,
            batch_id=batch_id,
            batch_index=batch_index,
        )
        await self.claim_execution(record.id, worker_id, lease_seconds)
        return await self.get_execution(record.id)

    @abc.abstractmethod
    async def claim_execution(self, execution_id: str, worker_id: str, lease_seconds: float) -> str:
        """Start running an execution under a fresh lease; returns the lease token.

        A ``pending`` execution, or a ``running`` one whose lease has expired, can be claimed.
        The claim sets ``started_at`` and increments ``attempts``.

        Raises:
            LeaseLostError: it is terminal, or another worker holds a live lease.
            NotFoundError: no such execution.
        """

    @abc.abstractmethod
    async def heartbeat(
        self, execution_id: str, lease_token: str, lease_seconds: float
    ) -> datetime:
        """Extend the lease; returns the new expiry. :class:`LeaseLostError` if not the holder."""

    @abc.abstractmethod
    async def finish_execution(
        self,
        execution_id: str,
        lease_token: str,
        status: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        usage: UsageMap | None = None,
        duration_ms: float | None = None,
        backend: str | None = None,
        steps: Sequence[StepRecord] = (),
        attempts: Sequence[AttemptRecord] = (),
        bump_counters: bool = True,
    ) -> ExecutionRecord:
        """End a claimed execution in one transaction, conditional on its lease token.

        Writes the terminal ``status`` and results, releases the lease, inserts ``steps`` and
        ``attempts``, and (when ``bump_counters`` and the status is completed or failed) counts
        it on its program version.

        Raises:
            LeaseLostError: this token no longer holds the execution; nothing was written.
            NotFoundError: no such execution.
        """

    @abc.abstractmethod
    async def record_execution(
        self,
        program: str,
        program_version: int,
        inputs: dict[str, Any],
        status: ExecutionStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
        usage: UsageMap | None = None,
        duration_ms: float | None = None,
        backend: str | None = None,
        started_at: datetime | None = None,
        finished_at: datetime | None = None,
        steps: Sequence[StepRecord] = (),
        attempts: Sequence[AttemptRecord] = (),
        execution_id: str | None = None,
        batch_id: str | None = None,
        batch_index: int | None = None,
        worker_id: str | None = None,
        bump_counters: bool = True,
    ) -> ExecutionRecord:
        """The fast path: record work that already finished, all in ONE transaction.

        Inserts the terminal execution with its steps and attempts and (when ``bump_counters``
        and the status is completed or failed) counts it on the program version.
        """

    @abc.abstractmethod
    async def get_execution(self, execution_id: str) -> ExecutionRecord:
        """One execution, or :class:`NotFoundError`."""

    @abc.abstractmethod
    async def list_executions(
        self,
        filters: ExecutionFilter | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> ExecutionRecordPage:
        """Executions matching ``filters``, newest first, ``limit`` per page.

        Pass the returned ``next_cursor`` as ``cursor`` for the following page.
        """

    @abc.abstractmethod
    async def add_steps(
        self, execution_id: str, lease_token: str, steps: Iterable[StepRecord]
    ) -> None:
        """Append module runs to a claimed execution (conditional on the lease token)."""

    @abc.abstractmethod
    async def add_attempts(
        self, execution_id: str, lease_token: str, attempts: Iterable[AttemptRecord]
    ) -> None:
        """Append backend calls to a claimed execution (conditional on the lease token)."""

    @abc.abstractmethod
    async def list_steps(self, execution_id: str) -> list[StepRecord]:
        """An execution's steps in the order they were added."""

    @abc.abstractmethod
    async def list_attempts(self, execution_id: str) -> list[AttemptRecord]:
        """An execution's backend calls in the order they were added."""

    @abc.abstractmethod
    async def list_steps_for_program(
        self, name: str, *, version: int | None = None, limit: int = 1000
    ) -> list[StepRecord]:
        """The most recent ``limit`` steps recorded for a program (newest first): its history."""

    @abc.abstractmethod
    async def find_expired_leases(
        self, now: datetime | None = None, *, limit: int = 100
    ) -> list[ExecutionRecord]:
        """Running executions whose lease expired before ``now`` (default: now), oldest first."""

    @abc.abstractmethod
    async def match_ids(self, kind: IdKind, prefix: str, *, limit: int = 10) -> list[str]:
        """The ids of ``kind`` that start with ``prefix`` (case-sensitive), in id order.

        How a short id is found, as ``git`` finds an object by the start of its hash: one match
        is the record, several are the candidates to show. A full id matches itself.

        Raises:
            ValidationError: an empty prefix or a ``limit`` below 1.
        """

    # -- batches -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_batch(
        self,
        program: str,
        program_version: int,
        config: dict[str, Any],
        total: int,
        *,
        batch_id: str | None = None,
    ) -> BatchRecord:
        """Create a ``pending`` batch of ``total`` items (a new id unless one is given)."""

    @abc.abstractmethod
    async def get_batch(self, batch_id: str) -> BatchRecord:
        """One batch, or :class:`NotFoundError`."""

    @abc.abstractmethod
    async def list_batches(
        self, *, statuses: Sequence[BatchStatus] = (), limit: int = 100, program: str | None = None
    ) -> list[BatchRecord]:
        """Batches (only these statuses, only this program, when given), newest first."""

    @abc.abstractmethod
    async def update_batch_counts(
        self, batch_id: str, *, completed: int = 0, failed: int = 0, cancelled: int = 0
    ) -> BatchRecord:
        """Atomically add to a batch's counts; returns the batch after the change."""

    @abc.abstractmethod
    async def set_batch_status(self, batch_id: str, status: BatchStatus) -> BatchRecord:
        """Set a batch's status (a terminal status also sets ``finished_at``)."""

    @abc.abstractmethod
    async def list_batch_executions(self, batch_id: str) -> list[ExecutionRecord]:
        """A batch's executions by batch index (then creation time)."""

    # -- bulk operations for batches -----------------------------------------------------------

    @abc.abstractmethod
    async def add_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
    ) -> None:
        """Create one ``pending`` execution per ``(batch_index, inputs)``, in ONE transaction.

        Idempotent per ``(batch_id, batch_index)``: an index that already has an execution is
        left alone, so a resumed batch can feed the same items again. Callers feed chunks of a
        few hundred items while streaming the input.

        Raises:
            NotFoundError: the batch or the program version does not exist.
        """

    @abc.abstractmethod
    async def claim_batch_items(
        self,
        batch_id: str,
        indexes: Sequence[int],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        """Claim the batch items at ``indexes`` that may run, in ONE transaction.

        Claimable: ``pending``, ``running`` with an expired lease, ``cancelled`` (a resumed
        batch re-runs them) and, when ``retry_failed``, ``failed``; ``completed`` never. The
        claimed items become ``running`` under ONE new lease token shared by the group
        (``attempts`` + 1, ``started_at``, ``worker_id``, ``lease_expires_at``). A claimed item
        that was failed or cancelled leaves that count of its batch, so the batch counts always
        equal the number of its executions in each terminal status.

        Returns:
            ``{batch_index: (execution_id, lease_token)}`` for the items claimed.

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
        """

    @abc.abstractmethod
    async def add_and_claim_batch_items(
        self,
        batch_id: str,
        program: str,
        program_version: int,
        items: Sequence[tuple[int, Mapping[str, Any]]],
        *,
        worker_id: str,
        lease_seconds: float,
        retry_failed: bool = True,
    ) -> dict[int, tuple[str, str]]:
        """:meth:`add_batch_items` then :meth:`claim_batch_items` over the same indexes, in ONE
        transaction, and cheaper than the two.

        A new index is inserted directly as ``running`` under the new lease token
        (``attempts`` 1, ``started_at``, ``worker_id``, ``lease_expires_at``), never as
        ``pending`` first. An index that already has an execution (a resumed batch) keeps its
        inputs and goes through the rules of :meth:`claim_batch_items`: claimable when
        ``pending``, ``running`` with an expired lease, ``cancelled`` or (when
        ``retry_failed``) ``failed``, never when ``completed``; a claimed failed or cancelled
        item leaves that count of its batch. Every item claimed, new or not, shares ONE new
        lease token. The same index twice in ``items``: the first one wins.

        Args:
            batch_id: the batch the items belong to.
            program: the program name (of the batch).
            program_version: the version the new items run.
            items: ``(batch_index, inputs)`` pairs; callers feed chunks of a few hundred.
            worker_id: who holds the lease.
            lease_seconds: how long the lease lasts before a heartbeat must renew it.
            retry_failed: whether existing ``failed`` items are claimed again.

        Returns:
            ``{batch_index: (execution_id, lease_token)}`` for the items claimed (every new
            one, and the existing ones that were claimable).

        Raises:
            ValidationError: ``lease_seconds`` is not positive.
            NotFoundError: the batch or the program version does not exist.
            StorageError: an input is not JSON-serialisable (nothing was written).
        """

    @abc.abstractmethod
    async def finish_executions(self, requests: Sequence[FinishRequest]) -> list[bool]:
        """End many claimed executions in ONE transaction, each conditional on its lease token.

        A request whose token no longer holds its (running) execution writes nothing, its
        steps and attempts included, and does not affect the others. Program counters get the
        summed deltas of the written rows (as :meth:`finish_execution` counts them), and each
        affected batch's completed/failed/cancelled counts grow by the rows written.

        Returns:
            Per request, in order: ``True`` when written, ``False`` when the lease was lost
            (or the execution does not exist).

        Raises:
            ValidationError: a request's status is not terminal; nothing was written.
        """

    @abc.abstractmethod
    async def heartbeat_lease(self, lease_token: str, lease_seconds: float) -> int:
        """Extend every running execution held by ``lease_token``; returns how many."""

    @abc.abstractmethod
    async def batch_item_states(self, batch_id: str) -> dict[str, int]:
        """How many executions of the batch are in each status (statuses with none omitted).

        Raises:
            NotFoundError: no such batch.
        """

    @abc.abstractmethod
    def iter_batch_results(
        self, batch_id: str, *, chunk: int = 1000
    ) -> AsyncIterator[ExecutionRecord]:
        """The batch's indexed executions in ``batch_index`` order, read ``chunk`` at a time.

        Memory stays flat however large the batch: only one chunk is held at once.

        Raises:
            NotFoundError: no such batch (on the first iteration).
        """

    # -- breakers ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def save_breaker(self, record: BreakerRecord) -> None:
        """Store (or replace) one backend's circuit-breaker state."""

    @abc.abstractmethod
    async def list_breakers(self) -> list[BreakerRecord]:
        """Every stored circuit-breaker state, by backend name."""

    # -- maintenance: health and cleanup (implemented in _maintenance_{sql,memory}.py) ----------

    @abc.abstractmethod
    async def probe_tables(self) -> dict[str, str | None]:
        """Read one row of every table: ``{table: None}`` when readable, else the error text."""

    @abc.abstractmethod
    async def open_executions(self, now: datetime | None = None) -> _m.OpenExecutions:
        """How many executions are pending, running, and running with a lease expired at ``now``."""

    @abc.abstractmethod
    async def execution_summaries(
        self, since: datetime, *, limit: int = 50_000
    ) -> list[_m.ExecutionSample]:
        """Executions created at or after ``since`` (newest first, at most ``limit``)."""

    @abc.abstractmethod
    async def reap_expired_leases(
        self,
        now: datetime | None = None,
        *,
        attempt_cap: int = 3,
        limit: int = 1000,
        dry_run: bool = False,
    ) -> _m.ReapResult:
        """Re-queue or fail up to ``limit`` running executions whose lease expired before ``now``.

        A batch item below ``attempt_cap`` attempts goes back to ``pending`` with its lease
        cleared (its next claim counts the next attempt); any other one is failed with code
        ``lease_expired``, counted on its program version and its batch. One transaction that
        locks what it changes (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN IMMEDIATE`` on
        SQLite), so concurrent reapers never act twice on one execution. A dry run classifies
        every expired execution (no ``limit``) and changes nothing.
        """

    @abc.abstractmethod
    async def finalize_batches(
        self,
        *,
        dry_run: bool = False,
        limit: int = 1000,
        assume_failed: Mapping[str, int] | None = None,
    ) -> list[_m.BatchFinalization]:
        """Finish open batches whose every item exists and is terminal (counts recomputed).

        ``assume_failed`` (dry runs: ``{batch_id: n}``) counts ``n`` running items of a batch as
        failed, as a real cleanup's reaper pass would have left them.
        """

    @abc.abstractmethod
    async def fail_stuck_programs(
        self, updated_before: datetime, *, dry_run: bool = False
    ) -> list[tuple[str, int]]:
        """Move versions stuck ``initializing`` since before ``updated_before`` to ``error``."""

    @abc.abstractmethod
    async def delete_executions(
        self,
        created_before: datetime,
        *,
        limit: int = 1000,
        dry_run: bool = False,
        sample: int = 100,
    ) -> tuple[int, list[str]]:
        """Delete up to ``limit`` terminal executions created (and finished) before a time.

        Their steps and attempts go with them, in one short transaction; call again until the
        count is below ``limit``. A dry run counts every one that qualifies and deletes nothing.

        Returns:
            How many were (or would be) deleted, and up to ``sample`` of their ids.
        """


# -- helpers shared by the implementations ------------------------------------------------------


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
    """Reject an empty id prefix or a non-positive limit (see :meth:`Store.match_ids`)."""
    if not prefix:
        raise ValidationError(
            "an id prefix cannot be empty:", [ErrorDetail("prefix", "empty", "give an id prefix")]
        )
    check_positive("limit", limit)


def check_startable(
    record: ProgramRecord, latest: ProgramRecord | None, *, require_ready: bool
) -> None:
    """Refuse to start an execution of a version that is not ready, or not the newest.

    Raises:
        ProgramStateError: naming the version's status (or the newer version).
    """
    if require_ready and record.status is not ProgramStatus.READY:
        raise ProgramStateError(
            f"program {record.name!r} v{record.version} is {record.status.value}, not ready",
            status=record.status.value,
        )
    if latest is not None and latest.version != record.version:
        raise ProgramStateError(
            f"program {record.name!r} v{record.version} is not the newest version"
            f" (v{latest.version} is {latest.status.value})",
            status=latest.status.value,
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
    """Whether :meth:`Store.claim_batch_items` may (re)start a batch item in this state."""
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

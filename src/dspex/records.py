"""Domain records every layer shares: statuses with behaviour and immutable records.

These are plain frozen dataclasses (no SQLAlchemy, no I/O) so that the engine, the actions, the
CLI and every :class:`dspex.store.Store` implementation speak the same types. Timestamps are
timezone-aware UTC ``datetime`` objects; JSON payloads are plain ``dict``/``list`` values. The
ids the stores create come from :func:`new_id` (time-ordered UUIDv7 strings) and lease tokens from
:func:`new_token`.

Example:
    >>> ExecutionStatus.COMPLETED.is_terminal
    True
    >>> ProgramStatus.DRAFT.can_transition_to(ProgramStatus.INITIALIZING)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from uuid_utils import uuid4, uuid7

from dspex._slots import fast_frozen_init

__all__ = [
    "AttemptOutcome",
    "AttemptRecord",
    "BatchRecord",
    "BatchStatus",
    "BreakerRecord",
    "EvaluationRecord",
    "EvaluationStatus",
    "ExecutionFilter",
    "ExecutionRecord",
    "ExecutionRecordPage",
    "ExecutionStatus",
    "FinishRequest",
    "ItemScore",
    "OptimizationRecord",
    "OptimizationStatus",
    "OptimizationTrial",
    "ProgramRecord",
    "ProgramStatus",
    "PromotionRecord",
    "SignatureRecord",
    "StepRecord",
    "StepStatus",
    "new_id",
    "new_token",
    "utc_now",
]

JSON = dict[str, Any]
UsageMap = dict[str, dict[str, int]]


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime (the default store clock)."""
    return datetime.now(UTC)


# -- ids -------------------------------------------------------------------------------------------
#
# Python 3.11 has no uuid7 (the stdlib's arrives in 3.14), so ids come from uuid-utils (the Rust
# ``uuid`` crate's generator). Its UUIDv7s carry 48 bits of Unix time in milliseconds and a
# counter seeded at random each millisecond, shared by every thread of the process, so ids of one
# process are strictly increasing, also when the wall clock steps back; the package reseeds its
# random source in a forked child.


def new_id() -> str:
    """A new UUIDv7 string: unique, and later ids of this process sort after earlier ones.

    Ids sort by creation time to the millisecond across processes (ids made in the same
    millisecond by different processes interleave), so inserts into an index on them land at
    its end instead of all over it. Thread-safe and cheap (a fraction of a microsecond).

    Example:
        >>> import uuid
        >>> uuid.UUID(new_id()).version
        7
        >>> a, b = new_id(), new_id()
        >>> a < b
        True
    """
    return str(uuid7())


def new_token() -> str:
    """A new random lease token: 32 hex digits (a UUIDv4: 122 random bits).

    From uuid-utils' generator, which reseeds in a forked child: a token is not a secret, and
    ``os.urandom`` is a system call that lets go of the GIL, which the store's writer thread
    then takes from the event loop for a while.
    """
    return uuid4().hex


class ExecutionStatus(StrEnum):
    """Lifecycle of one execution: ``pending → running → completed | failed | cancelled``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the execution is over (no further state change is allowed)."""
        return self in _TERMINAL_EXECUTION


_TERMINAL_EXECUTION = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)


class ProgramStatus(StrEnum):
    """Lifecycle of one program version: ``draft → initializing → ready | error → archived``."""

    DRAFT = "draft"
    INITIALIZING = "initializing"
    READY = "ready"
    ERROR = "error"
    ARCHIVED = "archived"

    def can_transition_to(self, target: ProgramStatus) -> bool:
        """Whether moving from this status to ``target`` is a legal lifecycle step.

        A ready or failed program may be initialized again (for example after a backend change);
        an archived program is final.
        """
        return target in _PROGRAM_TRANSITIONS[self]


_PROGRAM_TRANSITIONS: dict[ProgramStatus, frozenset[ProgramStatus]] = {
    ProgramStatus.DRAFT: frozenset({ProgramStatus.INITIALIZING, ProgramStatus.ARCHIVED}),
    ProgramStatus.INITIALIZING: frozenset({ProgramStatus.READY, ProgramStatus.ERROR}),
    ProgramStatus.READY: frozenset({ProgramStatus.INITIALIZING, ProgramStatus.ARCHIVED}),
    ProgramStatus.ERROR: frozenset({ProgramStatus.INITIALIZING, ProgramStatus.ARCHIVED}),
    ProgramStatus.ARCHIVED: frozenset(),
}


class StepStatus(StrEnum):
    """How one module run inside an execution ended."""

    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class AttemptOutcome(StrEnum):
    """How one backend call ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchStatus(StrEnum):
    """Lifecycle of a batch: ``pending → running → completed | failed | cancelled``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the batch is over."""
        return self in _TERMINAL_BATCH


_TERMINAL_BATCH = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED})


class OptimizationStatus(StrEnum):
    """Lifecycle of an optimization run: ``running → completed | failed | interrupted``.

    A ``failed`` or ``interrupted`` run (and a ``running`` one whose process stopped renewing
    its lease) can be resumed: it runs again as ``running``.
    """

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        """Whether the run is over (for now: failed and interrupted runs can be resumed)."""
        return self is not OptimizationStatus.RUNNING

    @property
    def is_resumable(self) -> bool:
        """Whether a run that ended so can be resumed."""
        return self in (OptimizationStatus.FAILED, OptimizationStatus.INTERRUPTED)


@dataclass(frozen=True, slots=True)
class SignatureRecord:
    """A stored signature: its name and its JSON spec."""

    name: str
    spec: JSON
    created_at: datetime
    updated_at: datetime


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One version of a registered program, with its lifecycle status and run counters.

    Attributes:
        name: the program's name (shared by all its versions).
        version: 1 for the first registration, +1 each time a changed spec is registered.
        spec: the program spec as JSON.
        spec_hash: a hash of the spec; an unchanged hash means an unchanged program.
        status: where the version is in its lifecycle.
        error: why it is in ``error`` status (``None`` otherwise).
        execution_count: finished executions (completed or failed) of this version.
        success_count: completed executions.
        failure_count: failed executions.
        total_duration_ms: summed duration of the counted executions.
    """

    name: str
    version: int
    spec: JSON
    spec_hash: str
    status: ProgramStatus
    error: str | None
    execution_count: int
    success_count: int
    failure_count: int
    total_duration_ms: float
    created_at: datetime
    updated_at: datetime

    @property
    def success_rate(self) -> float | None:
        """Completed over counted executions, or ``None`` before the first one."""
        return self.success_count / self.execution_count if self.execution_count else None

    @property
    def mean_duration_ms(self) -> float | None:
        """Mean duration of the counted executions, or ``None`` before the first one."""
        return self.total_duration_ms / self.execution_count if self.execution_count else None


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class StepRecord:
    """One module run inside an execution.

    Callers build it without ``execution_id``/``id``; the store fills both when it returns it.
    ``cache_hit`` says the response cache answered (no backend call); ``cost_saved_usd`` is
    then what the cached response cost when it was first made.
    ``inputs`` and ``outputs`` are what the module was given and answered, as traces record
    them (``[capture] inputs_outputs``: redacted and size limited, see :mod:`dspex.capture`);
    ``None`` when not captured.
    """

    module: str
    status: StepStatus
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_ms: float | None = None
    attempts: int = 1
    error_code: str | None = None
    error_message: str | None = None
    usage: UsageMap = field(default_factory=dict)
    execution_id: str | None = None
    id: int | None = None
    cost_usd: float = 0.0
    cache_hit: bool = False
    cost_saved_usd: float = 0.0
    inputs: JSON | None = None
    outputs: JSON | None = None


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One backend call made while running a module.

    Attributes:
        module: the module that made the call.
        attempt: 1-based attempt number within the module run (across backends).
        backend: the backend that was called.
        outcome: how the call ended.
        http_status: the provider's HTTP status, when there was one.
        retry_after: seconds the provider asked to wait, when it said.
        cost_usd: what the call's tokens cost, in US dollars (see :mod:`dspex.backends.pricing`).
        messages: the LM messages sent (``[capture] messages``; redacted and size limited).
        response: the LM's raw response (likewise).
    """

    module: str
    attempt: int
    backend: str
    outcome: AttemptOutcome
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error_code: str | None = None
    http_status: int | None = None
    retry_after: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    execution_id: str | None = None
    id: int | None = None
    cost_usd: float = 0.0
    messages: list[Any] | None = None
    response: Any = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """One run of a program version on one input.

    ``attempts`` counts how many times the execution was started (claimed); each backend call is
    an :class:`AttemptRecord`. The lease fields are set while a worker holds the execution.
    ``cost_usd`` is what its steps' tokens cost, in US dollars. ``cancel_requested_at``: when a
    cancel was asked for while a worker held it (the worker cancels the run on its next lease
    renewal). ``live_steps`` and ``live_attempts``: how many of its steps and attempts were
    recorded while it ran (:meth:`~dspex.store.executions.ExecutionStore.record_steps`), the
    first ones of the run; finishing it writes the others.
    """

    id: str
    program: str
    program_version: int
    status: ExecutionStatus
    inputs: JSON
    outputs: JSON | None
    error_code: str | None
    error_message: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    usage: UsageMap
    backend: str | None
    batch_id: str | None
    batch_index: int | None
    worker_id: str | None
    lease_token: str | None
    lease_expires_at: datetime | None
    cost_usd: float = 0.0
    cancel_requested_at: datetime | None = None
    live_steps: int = 0
    live_attempts: int = 0

    @classmethod
    def pending(
        cls,
        execution_id: str,
        program: str,
        program_version: int,
        inputs: JSON,
        created_at: datetime,
        *,
        batch_id: str | None = None,
        batch_index: int | None = None,
    ) -> ExecutionRecord:
        """A new execution that nobody has claimed yet."""
        return cls(
            id=execution_id,
            program=program,
            program_version=program_version,
            status=ExecutionStatus.PENDING,
            inputs=inputs,
            outputs=None,
            error_code=None,
            error_message=None,
            attempts=0,
            created_at=created_at,
            started_at=None,
            finished_at=None,
            duration_ms=None,
            usage={},
            backend=None,
            batch_id=batch_id,
            batch_index=batch_index,
            worker_id=None,
            lease_token=None,
            lease_expires_at=None,
        )

    @classmethod
    def started(
        cls,
        execution_id: str,
        program: str,
        program_version: int,
        inputs: JSON,
        now: datetime,
        *,
        worker_id: str,
        lease_token: str,
        lease_seconds: float,
        batch_id: str | None = None,
        batch_index: int | None = None,
    ) -> ExecutionRecord:
        """A new execution already claimed by ``worker_id``: its first attempt, running from
        ``now`` under a lease of ``lease_seconds``."""
        return replace(
            cls.pending(
                execution_id,
                program,
                program_version,
                inputs,
                now,
                batch_id=batch_id,
                batch_index=batch_index,
            ),
            status=ExecutionStatus.RUNNING,
            attempts=1,
            started_at=now,
            worker_id=worker_id,
            lease_token=lease_token,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
        )


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch of executions of one program version, with running counts.

    ``cost_usd`` is what every run of its items spent, in US dollars (a re-run item's earlier
    runs included), and ``rate_limited_s`` the seconds its items waited for backends' rate
    limits (``rpm``/``tpm``); both only grow.

    ``driver`` is the process running the batch, under a lease that lasts until
    ``driver_expires_at`` and that it renews while it runs; ``cancel_requested`` is set when a
    cancel was asked for from another process, which the driver sees when it renews its lease.
    """

    id: str
    program: str
    program_version: int
    config: JSON
    status: BatchStatus
    total: int
    completed: int
    failed: int
    cancelled: int
    created_at: datetime
    finished_at: datetime | None
    cost_usd: float = 0.0
    rate_limited_s: float = 0.0
    driver: str | None = None
    driver_expires_at: datetime | None = None
    cancel_requested: bool = False

    def driver_lapsed(self, now: datetime) -> bool:
        """Whether the batch is open with a driver whose lease expired (the process running
        it died or hung): another process may take it over."""
        return (
            not self.status.is_terminal
            and self.driver_expires_at is not None
            and self.driver_expires_at <= now
        )

    @property
    def remaining(self) -> int:
        """Items not yet finished one way or another."""
        return self.total - self.completed - self.failed - self.cancelled


class EvaluationStatus(StrEnum):
    """An evaluation is ``running`` until every item of its batch is scored."""

    RUNNING = "running"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class EvaluationRecord:
    """A program version measured on a devset with a metric: a batch plus a score per item.

    ``score`` is the mean metric over all ``n`` items (failed executions score 0 and are counted
    in ``failed``); both are ``None`` until the evaluation completes.
    """

    id: str
    program: str
    program_version: int
    metric: str
    devset_hash: str
    devset: str
    batch_id: str | None
    status: EvaluationStatus
    total: int
    score: float | None
    failed: int | None
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ItemScore:
    """The metric value of one item of an evaluation (0 for an execution that did not complete)."""

    index: int
    execution_id: str | None
    status: str
    score: float


@dataclass(frozen=True, slots=True)
class PromotionRecord:
    """One move of a program's current-version pointer (rollback is a promotion too)."""

    id: int
    program: str
    version: int
    previous_version: int | None
    forced: bool
    metric: str | None
    devset_hash: str | None
    score: float | None
    previous_score: float | None
    min_improvement: float | None
    promoted_by: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """The persisted state of one backend's circuit breaker."""

    backend: str
    state: str
    failure_count: int = 0
    success_count: int = 0
    opened_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Which executions :meth:`dspex.store.Store.list_executions` returns (all given must match).

    Attributes:
        program: only this program.
        program_version: only this version (meaningful with ``program``).
        statuses: only these statuses (empty means any).
        batch_id: only executions of this batch.
        created_after: only executions created at or after this time.
        created_before: only executions created strictly before this time.
    """

    program: str | None = None
    program_version: int | None = None
    statuses: Sequence[ExecutionStatus] = ()
    batch_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class ExecutionRecordPage:
    """One page of executions, newest first; pass ``next_cursor`` to get the next page."""

    items: list[ExecutionRecord]
    next_cursor: str | None


@fast_frozen_init
@dataclass(frozen=True, slots=True)
class FinishRequest:
    """One claimed execution to end, for :meth:`dspex.store.Store.finish_executions`.

    The fields mean what the keyword arguments of
    :meth:`~dspex.store.Store.finish_execution` mean; many requests are written in one
    transaction, each conditional on its own lease token. ``cost_usd`` and ``rate_limited_ms``
    (time the run waited for rate limits) are also added to the execution's batch.
    """

    execution_id: str
    lease_token: str
    status: ExecutionStatus
    outputs: JSON | None = None
    error_code: str | None = None
    error_message: str | None = None
    usage: UsageMap = field(default_factory=dict)
    duration_ms: float | None = None
    backend: str | None = None
    steps: tuple[StepRecord, ...] = ()
    attempts: tuple[AttemptRecord, ...] = ()
    bump_counters: bool = True
    cost_usd: float = 0.0
    rate_limited_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class OptimizationTrial:
    """One candidate an optimizer scored during an optimization run.

    Attributes:
        number: its position in the run (0 is the starting version, the baseline).
        score: its mean metric on what it was scored on (``None`` when not scored).
        detail: what the optimizer says about it (JSON: ``{"kind": "baseline"}``, a seed, a
            minibatch flag, …).
    """

    number: int
    score: float | None
    detail: JSON = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OptimizationRecord:
    """One run of a DSPy optimizer over a program version.

    Attributes:
        id: the run's id (a UUIDv7 string).
        program: the program name.
        program_version: the version optimized (the parent of the result).
        optimizer: ``bootstrap_few_shot``, ``bootstrap_random_search``, ``mipro_v2`` or ``gepa``.
        settings: the optimizer's settings as used (JSON).
        metric: the metric's name.
        trainset_hash: sha256 of the training set (its canonical JSON lines).
        trainset_size: examples in the training set.
        valset_hash: sha256 of the validation set, when one was given.
        valset_size: examples in the validation set (the training set's when none was given).
        seed: the seed given to the optimizer.
        status: ``running``, ``completed`` or ``failed``.
        baseline_score: the parent version's mean metric on the validation set.
        score: the result's mean metric on the validation set.
        result_version: the program version written with the result (in ``draft``).
        stats: what the run cost: ``program_calls``, ``failed_calls``, ``lm_calls``,
            ``usage`` (tokens by model).
        error: why it failed (``"<code>: <message>"``).
        trials: the candidates scored, by number (filled by ``get_optimization`` only).
        worker_id: the process that runs (or last ran) it.
        lease_token: the lease of that process; every write of its outcome is conditional on it.
        lease_expires_at: when the lease ends unless its heartbeat renews it (a ``running`` run
            past it has lost its process).
        attempts: how many times it was started (1, plus one per resume).
    """

    id: str
    program: str
    program_version: int
    optimizer: str
    settings: JSON
    metric: str
    trainset_hash: str
    trainset_size: int
    valset_hash: str | None
    valset_size: int
    seed: int | None
    status: OptimizationStatus
    baseline_score: float | None
    score: float | None
    result_version: int | None
    stats: JSON
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    trials: tuple[OptimizationTrial, ...] = ()
    worker_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    attempts: int = 1

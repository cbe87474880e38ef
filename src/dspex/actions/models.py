"""The result models the runtime returns: frozen pydantic models with stable, JSON-friendly keys.

Every model dumps to JSON with ``model.model_dump(mode="json")``; the CLI's ``--json`` output and
the HTTP service use exactly these keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    ExecutionRecord,
    ExecutionStatus,
    ProgramRecord,
    ProgramStatus,
    StepRecord,
    StepStatus,
)

__all__ = [
    "AttemptInfo",
    "Bottleneck",
    "ErrorInfo",
    "ExecutionDetail",
    "ExecutionPage",
    "ExecutionResult",
    "ExecutionSummary",
    "GraphInfo",
    "GraphModule",
    "ModuleHistory",
    "ProgramHistory",
    "ProgramInfo",
    "StepInfo",
]

UsageDict = dict[str, dict[str, int]]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProgramInfo(_Model):
    """One version of a registered program: lifecycle status and run counters.

    Attributes:
        name: the program name.
        version: the version (1 for the first registration).
        status: ``draft``, ``initializing``, ``ready``, ``error`` or ``archived``.
        error: why it is in ``error`` status.
        spec_hash: sha256 of the canonical JSON spec.
        execution_count: finished executions (completed or failed) of this version.
        success_rate: completed over finished, ``None`` before the first.
        mean_duration_ms: mean duration of finished executions, ``None`` before the first.
        modules: how many modules the program has.
        signature: the program signature as text.
        current: this is the program's current version (the one last promoted, else the
            newest): what ``run``, ``batch`` and the service use when no version is named.
    """

    name: str
    version: int
    status: ProgramStatus
    error: str | None
    spec_hash: str
    created_at: datetime
    updated_at: datetime
    execution_count: int
    success_count: int
    failure_count: int
    success_rate: float | None
    mean_duration_ms: float | None
    modules: int
    signature: str
    current: bool = False

    @classmethod
    def from_record(
        cls, record: ProgramRecord, *, modules: int, signature: str, current: bool = False
    ) -> ProgramInfo:
        return cls(
            name=record.name,
            version=record.version,
            status=record.status,
            error=record.error,
            spec_hash=record.spec_hash,
            created_at=record.created_at,
            updated_at=record.updated_at,
            execution_count=record.execution_count,
            success_count=record.success_count,
            failure_count=record.failure_count,
            success_rate=record.success_rate,
            mean_duration_ms=record.mean_duration_ms,
            modules=modules,
            signature=signature,
            current=current,
        )


class ErrorInfo(_Model):
    """Why an execution failed: the stable ``code``, a message and the module, when one failed."""

    code: str
    message: str
    module: str | None = None


class StepInfo(_Model):
    """One module run inside an execution (times in ms from the start of the run; ``usage``:
    its tokens by model; ``cost_usd``: what they cost, in US dollars; ``cache_hit``: the
    response cache answered, with no backend call; ``cost_saved_usd``: what that cached
    response cost when it was made).

    What ``execute`` returns and what ``get_execution`` reads back are the same: both are built
    from the step's record by :meth:`from_record`. A predictor call inside a ``dspy`` module is a
    step named ``<module>.<predictor>``. ``inputs`` and ``outputs`` are the module's as
    recorded (``[capture] inputs_outputs``; sensitive fields ``"[redacted]"``), ``None`` when
    not captured.
    """

    module: str
    status: StepStatus
    started_ms: float | None
    ended_ms: float | None
    duration_ms: float | None
    attempts: int
    error_code: str | None = None
    error_message: str | None = None
    backend: str | None = None
    cost_usd: float = 0.0
    usage: UsageDict = {}
    cache_hit: bool = False
    cost_saved_usd: float = 0.0
    inputs: dict[str, Any] | None = None
    outputs: dict[str, Any] | None = None

    @classmethod
    def from_record(cls, record: StepRecord, *, base: datetime, backend: str | None) -> StepInfo:
        """The step as recorded, its times in ms after ``base`` (when the execution started).

        Args:
            record: the step's record.
            base: when the execution started (else when it was created).
            backend: the backend the module called, if it called one.
        """
        return cls(
            module=record.module,
            status=record.status,
            started_ms=_offset(base, record.started_at),
            ended_ms=_offset(base, record.ended_at),
            duration_ms=record.duration_ms,
            attempts=record.attempts,
            error_code=record.error_code,
            error_message=record.error_message,
            backend=backend,
            cost_usd=record.cost_usd,
            cache_hit=record.cache_hit,
            cost_saved_usd=record.cost_saved_usd,
            usage=record.usage,
            inputs=record.inputs,
            outputs=record.outputs,
        )


def _offset(base: datetime, at: datetime | None) -> float | None:
    return None if at is None else round((at - base).total_seconds() * 1000.0, 3)


class ExecutionResult(_Model):
    """What :meth:`dspex.Runtime.execute` returns.

    Attributes:
        execution_id: the recorded execution's id.
        program: the program name.
        program_version: the version that ran.
        status: ``completed``, ``failed`` or ``cancelled``.
        outputs: the validated outputs when completed, else ``None``.
        error: why it failed.
        duration_ms: how long the run took.
        usage: tokens by model: ``{model: {prompt_tokens, completion_tokens, total_tokens}}``.
        steps: one entry per module.
        attempts: backend/module calls made, retries included.
        cost_usd: what the run's tokens cost, in US dollars (models without a price: 0).
    """

    execution_id: str
    program: str
    program_version: int
    status: ExecutionStatus
    outputs: dict[str, Any] | None
    error: ErrorInfo | None
    duration_ms: float | None
    usage: UsageDict
    steps: list[StepInfo]
    attempts: int
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the execution completed."""
        return self.status == ExecutionStatus.COMPLETED


class AttemptInfo(_Model):
    """One recorded backend call; ``messages`` and ``response`` are the LM request's messages
    and its raw response when recorded (``[capture] messages``; redacted, size limited)."""

    module: str
    attempt: int
    backend: str
    outcome: AttemptOutcome
    error_code: str | None
    status: int | None
    retry_after: float | None
    started_at: datetime | None
    ended_at: datetime | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float = 0.0
    messages: list[Any] | None = None
    response: Any = None

    @classmethod
    def from_record(cls, record: AttemptRecord) -> AttemptInfo:
        return cls(
            module=record.module,
            attempt=record.attempt,
            backend=record.backend,
            outcome=record.outcome,
            error_code=record.error_code,
            status=record.http_status,
            retry_after=record.retry_after,
            started_at=record.started_at,
            ended_at=record.ended_at,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            cost_usd=record.cost_usd,
            messages=record.messages,
            response=record.response,
        )


class ExecutionDetail(ExecutionResult):
    """Everything recorded about one execution (an :class:`ExecutionResult` plus the record)."""

    inputs: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    backend: str | None
    worker_id: str | None
    batch_id: str | None
    batch_index: int | None
    attempt_records: list[AttemptInfo]


class ExecutionSummary(_Model):
    """One line of an execution listing."""

    execution_id: str
    program: str
    program_version: int
    status: ExecutionStatus
    duration_ms: float | None
    created_at: datetime
    error_code: str | None

    @classmethod
    def from_record(cls, record: ExecutionRecord) -> ExecutionSummary:
        return cls(
            execution_id=record.id,
            program=record.program,
            program_version=record.program_version,
            status=record.status,
            duration_ms=record.duration_ms,
            created_at=record.created_at,
            error_code=record.error_code,
        )


class ExecutionPage(_Model):
    """A page of executions, newest first; pass ``next_cursor`` back for the next page."""

    items: list[ExecutionSummary]
    next_cursor: str | None


class ModuleHistory(_Model):
    """One module's recorded performance.

    Attributes:
        runs: module runs that started.
        p50_ms: median duration.
        p95_ms: 95th percentile duration (linear interpolation between the closest ranks, the
            same definition as the batch statistics and ``health``).
        success_rate: completed over runs.
        critical_share: share of the recent runs' critical-path time spent in this module.
    """

    module: str
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    success_rate: float | None
    critical_share: float


class Bottleneck(_Model):
    """A module worth looking at, and why (``critical_path`` or ``slowest_p95``)."""

    module: str
    reason: str
    share: float


class ProgramHistory(_Model):
    """A program's recorded performance: modules, critical path and bottlenecks."""

    program: str
    executions: int
    success_rate: float | None
    modules: list[ModuleHistory]
    critical_path: list[str]
    bottlenecks: list[Bottleneck]


class GraphModule(_Model):
    """One module of a program graph."""

    name: str
    kind: str
    depends_on: list[str]
    backend: str | None


class ModuleDurations(_Model):
    """How long one module took across a batch's items (ms; ``runs``: items where it ran)."""

    module: str
    runs: int
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class SlowItem(_Model):
    """One of a batch's slowest items."""

    batch_index: int | None
    execution_id: str
    status: ExecutionStatus
    duration_ms: float | None


class BatchProfile(_Model):
    """Where a batch's time went: per-module duration distributions and its slowest items.

    Attributes:
        batch_id: the batch.
        items: executions recorded for it.
        sampled: executions whose steps the distributions come from (the slowest first, up to
            the sample size).
        modules: per module, in the program's order.
        slowest: the slowest items, slowest first.
    """

    batch_id: str
    items: int
    sampled: int
    modules: list[ModuleDurations]
    slowest: list[SlowItem]


class GraphInfo(_Model):
    """A program's plan (durations from history where recorded), its last run and, when asked
    for, one batch's profile."""

    program: str
    version: int
    plan: dict[str, Any]
    modules: list[GraphModule]
    last_run: ExecutionDetail | None
    batch: BatchProfile | None = None

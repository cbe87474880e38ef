"""Request and response bodies of the service that the runtime's own models do not cover."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dspex import BatchStats, CacheMode, EvaluationResult, ProgramInfo, Runtime, Strategy

__all__ = [
    "BatchAccepted",
    "BatchDone",
    "BatchFailure",
    "BatchStatusResponse",
    "CacheClearRequest",
    "CleanupRequest",
    "ExecuteRequest",
    "ExecutionAccepted",
    "LiveResponse",
    "ProgramDetail",
    "ProgramList",
    "ReadyResponse",
    "SchemaRequest",
    "ValidateRequest",
]

SignatureBody = str | dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Request(BaseModel):
    """A JSON request body: JSON's own types only (``0`` is not ``false``, ``"2"`` not ``2``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class LiveResponse(_Body):
    status: Literal["ok"]


class ReadyResponse(_Body):
    """``/readyz``: ``ready`` when the database answers with a current schema."""

    status: Literal["ready", "not_ready"]
    revision: str | None
    latency_ms: float | None
    reason: str


class ProgramList(_Body):
    items: list[ProgramInfo]


class ProgramDetail(_Body):
    """One program version: its info, its stored spec and its plan."""

    program: ProgramInfo
    spec: dict[str, Any]
    plan: dict[str, Any]


class ExecuteRequest(_Request):
    """``POST /programs/{name}/executions``."""

    inputs: dict[str, Any]
    version: int | None = Field(default=None, ge=1, le=Runtime.MAX_VERSION)
    backend: str | None = None
    timeout: float | None = Field(default=None, gt=0, le=3600)
    strategy: Strategy | None = None
    cache: CacheMode | None = Field(
        default=None,
        description="the response cache for this run: off, read_only or read_write (default: "
        "the modules' and backends' own, else [cache] mode)",
    )

    def run_options(self) -> dict[str, Any]:
        """The keyword arguments of ``Runtime.execute``/``start_execution``/``stream``."""
        return {
            "version": self.version,
            "backend": self.backend,
            "timeout": self.timeout,
            "strategy": self.strategy,
            "cache": self.cache,
        }


class ExecutionAccepted(_Body):
    """``202``: the execution is recorded and runs in the background."""

    execution_id: str
    status: Literal["pending", "running"]


class BatchAccepted(_Body):
    """``202``: the batch is recorded and runs in the background."""

    batch_id: str
    status: Literal["running"]


class BatchFailure(_Body):
    """Why a batch ended early: the stable code and a message."""

    code: str
    message: str


class BatchDone(_Body):
    """The ``done`` event of ``GET /batches/{id}/events``: how the batch ended (an evaluation's
    batch: also the evaluation, with its score)."""

    batch_id: str
    status: str
    stats: BatchStats | None
    error: BatchFailure | None
    evaluation: EvaluationResult | None = None


class BatchStatusResponse(_Body):
    """``GET /batches/{id}``: the recorded status and counts, what every run of its items
    spent (``cost_usd``) and waited for rate limits (``rate_limited_s``), and statistics once
    finished; ``driver``: the process running it (a replica's worker id), ``cancel_requested``:
    a cancel was asked for and its driver has not stopped it yet."""

    batch_id: str
    program: str
    program_version: int
    status: str
    counts: dict[str, int]
    running_here: bool
    stats: BatchStats | None
    error: BatchFailure | None
    cost_usd: float = 0.0
    rate_limited_s: float = 0.0
    driver: str | None = None
    cancel_requested: bool = False


class ValidateRequest(_Request):
    """``POST /signatures/validate``."""

    signature: SignatureBody
    level: Literal["standard", "comprehensive", "deep"] = "standard"


class SchemaRequest(_Request):
    """``POST /signatures/schema``."""

    signature: SignatureBody
    target: Literal["json_schema", "openai", "anthropic"] = "json_schema"
    part: Literal["inputs", "outputs"] = "outputs"


class CacheClearRequest(_Request):
    """``DELETE /cache``: which entries (every one unless narrowed); not a dry run unless
    ``dry_run``."""

    program: str | None = None
    older_than: str | None = Field(
        default=None, description="only entries stored longer ago than this (30d, 12h, 90m)"
    )
    expired: bool = False
    dry_run: bool = False


class CleanupRequest(_Request):
    """``POST /maintenance/cleanup``: a dry run unless ``dry_run`` is false."""

    dry_run: bool = True
    older_than: str | None = Field(
        default=None, description="delete finished executions older than this (30d, 12h, 90m)"
    )
    attempt_cap: int = Field(default=3, ge=1, le=1000)

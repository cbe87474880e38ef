"""Converting between database rows and :mod:`dspex.records` (and back)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from dspex.records import (
    AttemptOutcome,
    AttemptRecord,
    BatchRecord,
    BatchStatus,
    BreakerRecord,
    ExecutionRecord,
    ExecutionStatus,
    OptimizationRecord,
    OptimizationStatus,
    OptimizationTrial,
    ProgramRecord,
    ProgramStatus,
    StepRecord,
    StepStatus,
)

__all__ = [
    "attempt_from_row",
    "attempt_rows",
    "batch_from_row",
    "breaker_from_row",
    "execution_from_row",
    "optimization_from_row",
    "program_from_row",
    "step_from_row",
    "step_rows",
    "trial_from_row",
]


def program_from_row(row: sa.RowMapping) -> ProgramRecord:
    return ProgramRecord(
        name=row["name"],
        version=row["version"],
        spec=row["spec"],
        spec_hash=row["spec_hash"],
        status=ProgramStatus(row["status"]),
        error=row["error"],
        execution_count=row["execution_count"],
        success_count=row["success_count"],
        failure_count=row["failure_count"],
        total_duration_ms=float(row["total_duration_ms"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def execution_from_row(row: sa.RowMapping) -> ExecutionRecord:
    return ExecutionRecord(
        id=row["id"],
        program=row["program"],
        program_version=row["program_version"],
        status=ExecutionStatus(row["status"]),
        inputs=row["inputs"],
        outputs=row["outputs"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        duration_ms=row["duration_ms"],
        usage=row["usage"],
        backend=row["backend"],
        batch_id=row["batch_id"],
        batch_index=row["batch_index"],
        worker_id=row["worker_id"],
        lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"],
        cost_usd=float(row["cost_usd"]),
        cancel_requested_at=row["cancel_requested_at"],
        live_steps=row["live_steps"],
        live_attempts=row["live_attempts"],
    )


def step_from_row(row: sa.RowMapping) -> StepRecord:
    return StepRecord(
        module=row["module"],
        status=StepStatus(row["status"]),
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        duration_ms=row["duration_ms"],
        attempts=row["attempts"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        usage=row["usage"],
        execution_id=row["execution_id"],
        id=row["id"],
        cost_usd=float(row["cost_usd"]),
        cache_hit=bool(row["cache_hit"]),
        cost_saved_usd=float(row["cost_saved_usd"]),
        inputs=row["inputs"],
        outputs=row["outputs"],
    )


def attempt_from_row(row: sa.RowMapping) -> AttemptRecord:
    return AttemptRecord(
        module=row["module"],
        attempt=row["attempt"],
        backend=row["backend"],
        outcome=AttemptOutcome(row["outcome"]),
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        error_code=row["error_code"],
        http_status=row["http_status"],
        retry_after=row["retry_after"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        execution_id=row["execution_id"],
        id=row["id"],
        cost_usd=float(row["cost_usd"]),
        messages=row["messages"],
        response=row["response"],
    )


def batch_from_row(row: sa.RowMapping) -> BatchRecord:
    return BatchRecord(
        id=row["id"],
        program=row["program"],
        program_version=row["program_version"],
        config=row["config"],
        status=BatchStatus(row["status"]),
        total=row["total"],
        completed=row["completed"],
        failed=row["failed"],
        cancelled=row["cancelled"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        cost_usd=float(row["cost_usd"]),
        rate_limited_s=float(row["rate_limited_s"]),
        driver=row["driver"],
        driver_expires_at=row["driver_expires_at"],
        cancel_requested=row["cancel_requested_at"] is not None,
    )


def breaker_from_row(row: sa.RowMapping) -> BreakerRecord:
    return BreakerRecord(
        backend=row["backend"],
        state=row["state"],
        failure_count=row["failure_count"],
        success_count=row["success_count"],
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
    )


def step_rows(execution_id: str, steps: Iterable[StepRecord]) -> list[dict[str, Any]]:
    """Insert parameters for steps (``id`` is left to the database)."""
    return [
        {
            "execution_id": execution_id,
            "module": s.module,
            "status": s.status.value,
            "started_at": s.started_at,
            "ended_at": s.ended_at,
            "duration_ms": s.duration_ms,
            "attempts": s.attempts,
            "error_code": s.error_code,
            "error_message": s.error_message,
            "usage": s.usage,
            "cost_usd": s.cost_usd,
            "cache_hit": s.cache_hit,
            "cost_saved_usd": s.cost_saved_usd,
            "inputs": s.inputs,
            "outputs": s.outputs,
        }
        for s in steps
    ]


def attempt_rows(execution_id: str, attempts: Iterable[AttemptRecord]) -> list[dict[str, Any]]:
    """Insert parameters for attempts (``id`` is left to the database)."""
    return [
        {
            "execution_id": execution_id,
            "module": a.module,
            "attempt": a.attempt,
            "backend": a.backend,
            "outcome": a.outcome.value,
            "started_at": a.started_at,
            "ended_at": a.ended_at,
            "error_code": a.error_code,
            "http_status": a.http_status,
            "retry_after": a.retry_after,
            "prompt_tokens": a.prompt_tokens,
            "completion_tokens": a.completion_tokens,
            "cost_usd": a.cost_usd,
            "messages": a.messages,
            "response": a.response,
        }
        for a in attempts
    ]


def optimization_from_row(
    row: sa.RowMapping, trials: tuple[OptimizationTrial, ...] = ()
) -> OptimizationRecord:
    return OptimizationRecord(
        id=row["id"],
        program=row["program"],
        program_version=row["program_version"],
        optimizer=row["optimizer"],
        settings=row["settings"],
        metric=row["metric"],
        trainset_hash=row["trainset_hash"],
        trainset_size=row["trainset_size"],
        valset_hash=row["valset_hash"],
        valset_size=row["valset_size"],
        seed=row["seed"],
        status=OptimizationStatus(row["status"]),
        baseline_score=row["baseline_score"],
        score=row["score"],
        result_version=row["result_version"],
        stats=row["stats"],
        error=row["error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        trials=trials,
        worker_id=row["worker_id"],
        lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"],
        attempts=row["attempts"],
    )


def trial_from_row(row: sa.RowMapping) -> OptimizationTrial:
    return OptimizationTrial(number=row["number"], score=row["score"], detail=row["detail"])

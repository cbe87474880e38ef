"""An engine run's steps as the records the store keeps: steps, backend attempts, usage.

The execute operation and the batch runner record a finished run the same way; both call
:func:`run_records`. The predictor calls made inside a ``dspy`` module (its child steps) follow
its step as steps of their own, named ``<module>.<predictor>``, each LM call one of their
attempts.

It lives in the engine layer because the batch runner sits beside the engine, below the
operations (DESIGN §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from dspex.records import AttemptOutcome, AttemptRecord, StepRecord, StepStatus, UsageMap

if TYPE_CHECKING:
    from dspex.backends.base import BackendAttempt
    from dspex.engine.results import StepResult

__all__ = ["RunRecords", "run_records"]


class RunRecords:
    """What to store for a run's steps.

    Attributes:
        usage: token counts summed by model over every step.
        steps: one record per step, in run order.
        attempts: one record per backend call.
        backend: the backends used, comma-separated in first-use order (``None``: none).
    """

    __slots__ = ("attempts", "backend", "steps", "usage")

    def __init__(
        self,
        usage: UsageMap,
        steps: Sequence[StepRecord],
        attempts: Sequence[AttemptRecord],
        backend: str | None,
    ) -> None:
        self.usage = usage
        self.steps = steps
        self.attempts = attempts
        self.backend = backend


def run_records(steps: Sequence[StepResult], base: datetime) -> RunRecords:
    """The records of a run whose step offsets (ms) count from ``base``, when it started."""
    if len(steps) == 1 and not steps[0].attempt_details and not steps[0].children:
        return _one_step(steps[0], base)
    usage: UsageMap = {}
    step_records: list[StepRecord] = []
    attempt_records: list[AttemptRecord] = []
    backends: list[str] = []
    for step in steps:
        step_usage = {model: u.to_dict() for model, u in step.usage.items()}
        for model, counts in step_usage.items():
            total = usage.setdefault(model, dict.fromkeys(counts, 0))
            for key, value in counts.items():
                total[key] = total.get(key, 0) + value
        started_at = _at(base, step.started_ms)
        ended_at = _at(base, step.ended_ms)
        step_records.append(_step_record(step, started_at, ended_at, step_usage))
        attempt_records.extend(_attempts(step, started_at, ended_at))
        for child in step.children:  # its usage is already the step's: not counted again
            started_at = _at(base, child.started_ms)
            ended_at = _at(base, child.ended_ms)
            child_usage = {model: u.to_dict() for model, u in child.usage.items()}
            step_records.append(_step_record(child, started_at, ended_at, child_usage))
            attempt_records.extend(_attempts(child, started_at, ended_at))
        if step.backend is not None and step.backend not in backends:
            backends.append(step.backend)
    return RunRecords(usage, step_records, attempt_records, ",".join(backends) or None)


def _one_step(step: StepResult, base: datetime) -> RunRecords:
    """:func:`run_records` of a one-module run without coordinator attempts (the batch case).

    The step record and the run share one usage map (the same counts), and the step's attempt
    records share its timestamps: the store then converts each once.
    """
    usage: UsageMap = {model: u.to_dict() for model, u in step.usage.items()}
    started_at = _at(base, step.started_ms)
    ended_at = _at(base, step.ended_ms)
    record = _step_record(step, started_at, ended_at, usage)
    attempts = _attempts(step, started_at, ended_at)
    return RunRecords(usage, (record,), tuple(attempts), step.backend or None)


def _step_record(
    step: StepResult, started_at: datetime | None, ended_at: datetime | None, usage: UsageMap
) -> StepRecord:
    return StepRecord(
        module=step.name,
        status=step.status,
        started_at=started_at,
        ended_at=ended_at,
        duration_ms=step.duration_ms if step.started_ms is not None else None,
        attempts=step.attempts,
        error_code=step.error_code,
        error_message=step.error_message,
        usage=usage,
    )


def _at(base: datetime, offset_ms: float | None) -> datetime | None:
    return None if offset_ms is None else base + timedelta(milliseconds=offset_ms)


_OUTCOMES = {
    StepStatus.COMPLETED: AttemptOutcome.SUCCEEDED,
    StepStatus.FAILED: AttemptOutcome.FAILED,
    StepStatus.CANCELLED: AttemptOutcome.CANCELLED,
}


def _attempts(
    step: StepResult, started_at: datetime | None, ended_at: datetime | None
) -> list[AttemptRecord]:
    """One row per backend call of a step.

    When a coordinator group made the calls, the step carries each attempt (backend, times,
    outcome, error code, HTTP status, Retry-After, tokens) and each becomes a row as it was.
    Otherwise the engine only reports how many calls a step made and how the last one ended;
    earlier calls were retried, so they failed, and only the final call's tokens are known.
    """
    if step.attempt_details:
        return [_attempt_row(step.name, info) for info in step.attempt_details]
    if step.backend is None or step.attempts <= 0 or step.status not in _OUTCOMES:
        return []
    rows: list[AttemptRecord] = []
    usage = step.usage
    if len(usage) == 1:  # one model, the usual case
        (used,) = usage.values()
        prompt, completion = used.prompt_tokens, used.completion_tokens
    else:
        prompt = sum(u.prompt_tokens for u in usage.values())
        completion = sum(u.completion_tokens for u in usage.values())
    for number in range(1, step.attempts + 1):
        last = number == step.attempts
        outcome = _OUTCOMES[step.status] if last else AttemptOutcome.FAILED
        rows.append(
            AttemptRecord(
                module=step.name,
                attempt=number,
                backend=step.backend,
                outcome=outcome,
                started_at=started_at if number == 1 else None,
                ended_at=ended_at if last else None,
                error_code=step.error_code if outcome is AttemptOutcome.FAILED and last else None,
                prompt_tokens=prompt if last else 0,
                completion_tokens=completion if last else 0,
            )
        )
    return rows


def _attempt_row(module: str, info: BackendAttempt) -> AttemptRecord:
    return AttemptRecord(
        module=module,
        attempt=info.attempt,
        backend=info.backend,
        outcome=AttemptOutcome(info.outcome),
        started_at=datetime.fromtimestamp(info.started_at, UTC),
        ended_at=datetime.fromtimestamp(info.ended_at, UTC),
        error_code=info.error_code,
        http_status=info.status,
        retry_after=info.retry_after,
        prompt_tokens=info.prompt_tokens,
        completion_tokens=info.completion_tokens,
    )

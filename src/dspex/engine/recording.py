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

from dspex._critical_path import is_child_step
from dspex.records import AttemptOutcome, AttemptRecord, StepRecord, StepStatus, UsageMap

if TYPE_CHECKING:
    from dspex.backends.base import BackendAttempt

    # re-exported for the batch runner, which names no backends type itself (DESIGN §2)
    from dspex.backends.pricing import PriceTable as PriceTable
    from dspex.engine.results import StepResult

__all__ = ["RunRecords", "Spend", "run_records", "spend_rows"]

Spend = tuple[str, str, int, int, float]
"""``(module, model, prompt_tokens, completion_tokens, cost_usd)``."""


class RunRecords:
    """What to store for a run's steps.

    Attributes:
        usage: token counts summed by model over every step.
        steps: one record per step, in run order.
        attempts: one record per backend call.
        backend: the backends used, comma-separated in first-use order (``None``: none).
        cost_usd: what the steps' tokens cost, in US dollars (0 without a price table).
    """

    __slots__ = ("attempts", "backend", "cost_usd", "steps", "usage")

    def __init__(
        self,
        usage: UsageMap,
        steps: Sequence[StepRecord],
        attempts: Sequence[AttemptRecord],
        backend: str | None,
        cost_usd: float = 0.0,
    ) -> None:
        self.usage = usage
        self.steps = steps
        self.attempts = attempts
        self.backend = backend
        self.cost_usd = cost_usd


def run_records(
    steps: Sequence[StepResult], base: datetime, prices: PriceTable | None = None
) -> RunRecords:
    """The records of a run whose step offsets (ms) count from ``base``, when it started.

    With ``prices``, every step, attempt and the run carry what their tokens cost (a ``dspy``
    module's predictor calls too; the run's cost counts each token once).
    """
    if len(steps) == 1 and not steps[0].attempt_details and not steps[0].children:
        return _one_step(steps[0], base, prices)
    usage: UsageMap = {}
    total_cost = 0.0
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
        cost = prices.cost(step.usage) if prices is not None else 0.0
        total_cost += cost
        step_records.append(_step_record(step, started_at, ended_at, step_usage, cost))
        attempt_records.extend(_attempts(step, started_at, ended_at, cost, prices))
        for child in step.children:  # its usage is already the step's: not counted again
            started_at = _at(base, child.started_ms)
            ended_at = _at(base, child.ended_ms)
            child_usage = {model: u.to_dict() for model, u in child.usage.items()}
            child_cost = prices.cost(child.usage) if prices is not None and child.usage else 0.0
            step_records.append(_step_record(child, started_at, ended_at, child_usage, child_cost))
            attempt_records.extend(_attempts(child, started_at, ended_at, child_cost, prices))
        if step.backend is not None and step.backend not in backends:
            backends.append(step.backend)
    return RunRecords(usage, step_records, attempt_records, ",".join(backends) or None, total_cost)


def spend_rows(steps: Sequence[StepRecord], prices: PriceTable) -> tuple[Spend, ...]:
    """What recorded steps used, one row per module and model (a ``dspy`` module's predictor
    calls are left out: their tokens are their module's already)."""
    rows: list[Spend] = []
    for step in steps:
        if is_child_step(step.module):
            continue
        for model, counts in step.usage.items():
            prompt = int(counts.get("prompt_tokens", 0))
            completion = int(counts.get("completion_tokens", 0))
            cost = prices.cost_of_counts(model, prompt, completion)
            rows.append((step.module, model, prompt, completion, cost))
    return tuple(rows)


def _one_step(step: StepResult, base: datetime, prices: PriceTable | None) -> RunRecords:
    """:func:`run_records` of a one-module run without coordinator attempts (the batch case).

    The step record and the run share one usage map (the same counts), and the step's attempt
    records share its timestamps: the store then converts each once.
    """
    usage: UsageMap = {model: u.to_dict() for model, u in step.usage.items()}
    started_at = _at(base, step.started_ms)
    ended_at = _at(base, step.ended_ms)
    cost = prices.cost(step.usage) if prices is not None and step.usage else 0.0
    record = _step_record(step, started_at, ended_at, usage, cost)
    attempts = _attempts(step, started_at, ended_at, cost, prices)
    return RunRecords(usage, (record,), tuple(attempts), step.backend or None, cost)


def _step_record(
    step: StepResult,
    started_at: datetime | None,
    ended_at: datetime | None,
    usage: UsageMap,
    cost: float,
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
        cost_usd=cost,
        cache_hit=step.cache_hit,
        cost_saved_usd=step.cost_saved_usd,
        inputs=step.recorded_inputs,
        outputs=step.recorded_outputs,
    )


def _at(base: datetime, offset_ms: float | None) -> datetime | None:
    return None if offset_ms is None else base + timedelta(milliseconds=offset_ms)


_OUTCOMES = {
    StepStatus.COMPLETED: AttemptOutcome.SUCCEEDED,
    StepStatus.FAILED: AttemptOutcome.FAILED,
    StepStatus.CANCELLED: AttemptOutcome.CANCELLED,
}


def _attempts(
    step: StepResult,
    started_at: datetime | None,
    ended_at: datetime | None,
    cost: float,
    prices: PriceTable | None,
) -> list[AttemptRecord]:
    """One row per backend call of a step.

    When a coordinator group made the calls, the step carries each attempt (backend, times,
    outcome, error code, HTTP status, Retry-After, tokens) and each becomes a row as it was.
    Otherwise the engine only reports how many calls a step made and how the last one ended;
    earlier calls were retried, so they failed, and only the final call's tokens are known.
    """
    if step.attempt_details:
        return [_attempt_row(step.name, info, prices) for info in step.attempt_details]
    if step.backend is None or step.attempts <= 0 or step.status not in _OUTCOMES:
        return []
    rows: list[AttemptRecord] = []
    exchange = step.exchange
    messages = list(exchange.messages) if exchange is not None and exchange.messages else None
    response = exchange.response if exchange is not None else None
    usage = step.usage
    if len(usage) == 1:  # one model, the usual case
        (used,) = usage.values()
        prompt, completion = used.prompt_tokens, used.completion_tokens
    else:
        prompt = sum(u.prompt_tokens for u in usage.values())
        completion = sum(u.completion_tokens for u in usage.values())
    # the module's own retry loop timed each attempt (and knows why each failed) when it made
    # several; without that, only the first start and the last end are known
    times = step.attempt_times if len(step.attempt_times) == step.attempts else ()
    base = started_at - timedelta(milliseconds=step.started_ms or 0.0) if started_at else None
    for number in range(1, step.attempts + 1):
        last = number == step.attempts
        outcome = _OUTCOMES[step.status] if last else AttemptOutcome.FAILED
        began: datetime | None = started_at if number == 1 else None
        ended: datetime | None = ended_at if last else None
        code = step.error_code if outcome is AttemptOutcome.FAILED and last else None
        if times and base is not None:
            offset_start, offset_end, why = times[number - 1]
            began, ended = _at(base, offset_start), _at(base, offset_end)
            if not last:
                code = why
        rows.append(
            AttemptRecord(
                module=step.name,
                attempt=number,
                backend=step.backend,
                outcome=outcome,
                started_at=began,
                ended_at=ended,
                error_code=code,
                prompt_tokens=prompt if last else 0,
                completion_tokens=completion if last else 0,
                cost_usd=cost if last else 0.0,
                messages=messages if last else None,
                response=response if last else None,
            )
        )
    return rows


def _attempt_row(module: str, info: BackendAttempt, prices: PriceTable | None) -> AttemptRecord:
    exchange = info.exchange
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
        cost_usd=prices.cost(info.usage) if prices is not None and info.usage else 0.0,
        messages=list(exchange.messages) if exchange is not None and exchange.messages else None,
        response=exchange.response if exchange is not None else None,
    )

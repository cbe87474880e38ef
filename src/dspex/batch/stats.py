"""Statistics of a batch run: success rate, latency percentiles, throughput, tokens, failures."""

from __future__ import annotations

from array import array
from collections import Counter

from pydantic import BaseModel, ConfigDict

from dspex._percentile import percentile, report_ms

__all__ = ["BatchStats", "StatsCollector"]


class BatchStats(BaseModel):
    """What one run of a batch did.

    Counts cover the whole batch (earlier runs of a resumed batch included); latencies, tokens,
    throughput and failures by code cover the items run this time.

    Attributes:
        total: items in the batch.
        completed: items completed.
        failed: items failed.
        cancelled: items cancelled (a stopped or interrupted run).
        skipped: items already completed by an earlier run, not run again.
        ran: items finished in this run.
        success_rate: completed over finished (completed + failed), ``None`` before any.
        p50_ms: median latency of the items run this time.
        p95_ms: 95th percentile latency (linear interpolation, as everywhere in dspex: see
            :mod:`dspex._percentile`).
        max_ms: the slowest item.
        wall_s: seconds this run took.
        throughput: items finished per second in this run.
        tokens: tokens by model: ``{model: {prompt_tokens, completion_tokens, total_tokens}}``.
        errors: failed items of this run by error code.
        retries: item-level retries made (whole executions re-run after a retryable error).
        cost_usd: what the items run this time spent, in US dollars (every run of an item).
        rate_limited_s: seconds the items run this time waited for backends' ``rpm``/``tpm``
            limits (summed over items, so it may exceed ``wall_s``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    total: int
    completed: int
    failed: int
    cancelled: int
    skipped: int
    ran: int
    success_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    wall_s: float
    throughput: float
    tokens: dict[str, dict[str, int]]
    errors: dict[str, int]
    retries: int
    cost_usd: float = 0.0
    rate_limited_s: float = 0.0


class StatsCollector:
    """Accumulates per-item facts in flat memory (latencies as a C array of doubles)."""

    def __init__(self) -> None:
        self.latencies: array[float] = array("d")
        self.tokens: dict[str, dict[str, int]] = {}
        self.errors: Counter[str] = Counter()
        self.retries = 0
        self.ran = 0
        self.cost_usd = 0.0
        self.rate_limited_s = 0.0

    def add(
        self,
        *,
        status: str,
        duration_ms: float | None,
        usage: dict[str, dict[str, int]],
        error_code: str | None,
        cost_usd: float = 0.0,
        rate_limited_ms: float = 0.0,
    ) -> None:
        """Count one finished item."""
        self.ran += 1
        self.cost_usd += cost_usd
        self.rate_limited_s += rate_limited_ms / 1000.0
        if duration_ms is not None and status != "cancelled":
            self.latencies.append(duration_ms)
        for model, counts in usage.items():
            total = self.tokens.setdefault(
                model, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            )
            for key, value in counts.items():
                total[key] = total.get(key, 0) + int(value)
        if status == "failed":
            self.errors[error_code or "unknown"] += 1

    def build(
        self,
        *,
        total: int,
        completed: int,
        failed: int,
        cancelled: int,
        skipped: int,
        wall_s: float,
    ) -> BatchStats:
        """The statistics, given the batch's counts and this run's wall time."""
        ordered = sorted(self.latencies)
        finished = completed + failed
        return BatchStats(
            total=total,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            skipped=skipped,
            ran=self.ran,
            success_rate=round(completed / finished, 6) if finished else None,
            p50_ms=report_ms(percentile(ordered, 50, presorted=True)),
            p95_ms=report_ms(percentile(ordered, 95, presorted=True)),
            max_ms=report_ms(ordered[-1] if ordered else None),
            wall_s=round(wall_s, 6),
            throughput=round(self.ran / wall_s, 3) if wall_s > 0 else 0.0,
            tokens=self.tokens,
            errors=dict(self.errors.most_common()),
            retries=self.retries,
            cost_usd=round(self.cost_usd, 9),
            rate_limited_s=round(self.rate_limited_s, 6),
        )

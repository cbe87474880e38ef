"""``Runtime.tune`` (``dspex program tune``): execution settings proposed from recorded runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

import dspex
from dspex.actions.tune import MIN_RUNS, attempts_for, proposed_timeout
from dspex.config import DefaultsSettings, Settings

PIPELINE: dict[str, Any] = {
    "name": "pipe",
    "signature": "ticket: str -> summary: str, team: str",
    "strategy": "sequential",
    "modules": {
        "summarize": {"kind": "predict", "signature": "ticket: str -> summary: str", "retry": 2},
        "route": {"kind": "predict", "signature": "ticket: str -> team: str", "timeout": 9.0},
    },
}


def test_the_retry_budget_leaves_at_most_one_call_in_a_thousand_failing() -> None:
    assert attempts_for(0.0) == 1
    assert attempts_for(0.1) == 3  # 0.1 ** 3 = 0.001
    assert attempts_for(0.2) == 5  # 0.2 ** 4 > 0.001
    assert attempts_for(0.6) == 5  # capped: retries would hide an unhealthy backend
    assert attempts_for(1.0) == 5


def test_a_timeout_is_the_p95_with_a_margin_rounded_up_to_a_tenth() -> None:
    assert proposed_timeout(2000.0) == 3.0
    assert proposed_timeout(1234.0) == 1.9
    assert proposed_timeout(10.0) == 1.0  # never below a second


@pytest.fixture
async def rt() -> AsyncIterator[dspex.Runtime]:
    backend = dspex.MockBackend("default", latency_ms=5, failure_rate=0.2, seed=7)
    # breakers off: an open breaker's instant refusals are not the durations under test
    settings = Settings(defaults=DefaultsSettings(breakers=False))
    async with dspex.Runtime.open(
        "memory://", backends={"default": backend}, settings=settings
    ) as runtime:
        await runtime.register(PIPELINE)
        await runtime.initialize("pipe")
        yield runtime


async def test_a_program_without_history_gets_no_change(rt: dspex.Runtime) -> None:
    proposal = await rt.tune("pipe", apply=True)
    assert (proposal.runs, proposal.changes, proposal.applied_version) == (0, [], None)
    assert all(f"{MIN_RUNS} are needed" in m.evidence[0] for m in proposal.modules)
    assert proposal.strategy.proposed == "sequential"


async def test_recorded_runs_give_timeouts_retry_budgets_and_the_strategy(
    rt: dspex.Runtime,
) -> None:
    for i in range(24):
        await rt.execute("pipe", {"ticket": f"t{i}"})
    proposal = await rt.tune("pipe")
    assert proposal.runs == 24
    summarize, route = proposal.modules
    assert summarize.runs == 24
    assert summarize.p95_ms is not None
    assert summarize.p95_ms >= 5.0
    assert summarize.proposed_timeout == 1.0  # 5 ms x 1.5, and never below a second
    assert route.timeout == 9.0
    assert route.proposed_timeout == 1.0
    # the seeded mock fails a share of calls with a retryable error
    for module in (summarize, route):
        assert module.transient_failures > 0
        assert module.transient_rate == module.transient_failures / module.attempts
        assert module.proposed_max_attempts == max(
            module.max_attempts, attempts_for(module.transient_rate)
        )
    assert summarize.max_attempts == 2
    assert route.max_attempts == 1
    # two independent modules run one after the other: side by side is faster
    strategy = proposal.strategy
    assert strategy.current == "sequential"
    assert strategy.proposed == "optimized"
    assert strategy.estimated_ms["optimized"] < strategy.estimated_ms["sequential"]
    assert "strategy: sequential → optimized" in proposal.changes
    assert proposal.applied_version is None


async def test_apply_writes_the_proposal_as_a_draft_with_its_lineage(rt: dspex.Runtime) -> None:
    for i in range(12):
        await rt.execute("pipe", {"ticket": f"t{i}"})
    proposal = await rt.tune("pipe", apply=True)
    assert proposal.applied_version == 2
    info = await rt.get_program("pipe", 2)
    assert info.status == "draft"
    spec = (await rt.load_program("pipe", 2)).to_dict()
    assert spec.get("strategy", "optimized") == "optimized"  # the default is left out
    for module in proposal.modules:
        entry = spec["modules"][module.module]
        assert entry["timeout"] == module.proposed_timeout
        assert entry.get("retry", {}).get("max_attempts", 1) == module.proposed_max_attempts
    lineage = spec["metadata"]["dspex.lineage"]
    assert lineage["parent_version"] == 1
    assert lineage["tune"]["changes"] == proposal.changes
    # the history of version 1 gives the same proposal again: no third version
    again = await rt.tune("pipe", version=1, apply=True)
    assert again.applied_version == 2

"""One percentile definition: linear interpolation, and the same p95 in every report.

The recorded runs use scripted mock latencies under looptime, so every duration is exact.
"""

from __future__ import annotations

import asyncio
import statistics
from array import array
from typing import Any

import pytest
from tests.runtime._support import make_runtime, ready

from dspex._percentile import percentile, report_ms
from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.store import MemoryStore

# Nine quick items and one slow one: nearest-rank p95 is the slow item (1000), linear
# interpolation is 590.5, so a report using another definition is caught.
LATENCIES_MS = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 1000.0]


def test_percentile_interpolates_linearly_between_the_closest_ranks() -> None:
    assert percentile([10.0, 20.0, 30.0, 40.0], 50) == 25.0
    assert percentile([10.0, 20.0, 30.0, 40.0], 95) == pytest.approx(38.5)
    assert percentile(LATENCIES_MS, 95) == pytest.approx(590.5)


def test_percentile_matches_the_inclusive_method_of_the_statistics_module() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0, 5.0, 3.0, 5.0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    for q in range(1, 100):
        assert percentile(values, q) == pytest.approx(cuts[q - 1])


def test_percentile_ends_are_the_minimum_and_maximum() -> None:
    assert percentile([5.0, 1.0, 3.0], 0) == 1.0
    assert percentile([5.0, 1.0, 3.0], 100) == 5.0
    assert percentile([7.0], 95) == 7.0


def test_percentile_of_nothing_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_reads_a_presorted_array_of_doubles() -> None:
    ordered = array("d", sorted(LATENCIES_MS))
    assert percentile(ordered, 95, presorted=True) == percentile(LATENCIES_MS, 95)


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_refuses_a_rank_outside_0_to_100(q: float) -> None:
    with pytest.raises(ValueError, match="0, 100"):
        percentile([1.0], q)


async def _answer_after_the_asked_latency(request: PredictRequest) -> dict[str, Any]:
    await asyncio.sleep(float(request.inputs["question"]) / 1000.0)
    return {"answer": "ok"}


@pytest.mark.looptime
async def test_p95_of_the_same_runs_is_equal_in_batch_stats_history_and_health() -> None:
    backend = MockBackend("default", handler=_answer_after_the_asked_latency)
    async with make_runtime(MemoryStore(), {"default": backend}) as rt:
        await ready(rt)
        items = [{"question": str(ms)} for ms in LATENCIES_MS]
        batch = await rt.run_batch("qa", items, max_concurrency=len(items))
        history = await rt.history("qa")
        health = await rt.health("comprehensive")
    (module,) = history.modules
    (program,) = health.check("performance").details["programs"]
    expected = report_ms(percentile(LATENCIES_MS, 95))
    assert expected == 590.5
    assert (batch.stats.p95_ms, module.p95_ms, program["p95_ms"]) == (expected,) * 3
    assert (batch.stats.p50_ms, module.p50_ms, program["p50_ms"]) == (55.0,) * 3

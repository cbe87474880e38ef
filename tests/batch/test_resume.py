"""Resumable batches on every store: counts, skipping completed items, re-running the rest."""

from __future__ import annotations

import pytest
from tests.batch._support import Scripted, questions

from dspex import ValidationError
from dspex.runtime import Runtime


async def test_resume_skips_completed_and_reruns_failed(any_rt: Runtime, handler: Scripted) -> None:
    handler.latency = 0.0
    handler.fail_permanently = {"q2", "q5"}
    first = await any_rt.run_batch("qa", questions(8), max_retries=0)
    assert (first.stats.completed, first.stats.failed) == (6, 2)
    handler.fail_permanently = set()
    handler.calls.clear()
    second = await any_rt.run_batch("qa", questions(8), resume=first.batch_id)
    assert second.batch_id == first.batch_id
    assert sorted(handler.calls) == ["q2", "q5"]
    assert (second.stats.completed, second.stats.failed, second.stats.skipped) == (8, 0, 6)
    batch = await any_rt.store.get_batch(first.batch_id)
    assert (batch.status.value, batch.completed, batch.failed) == ("completed", 8, 0)
    assert second.results is not None
    assert [r.status for r in second.results] == ["completed"] * 8


async def test_batch_counts_match_the_executions(any_rt: Runtime, handler: Scripted) -> None:
    handler.latency = 0.0
    handler.fail_permanently = {"q1"}
    result = await any_rt.run_batch("qa", questions(5), max_retries=0)
    states = await any_rt.store.batch_item_states(result.batch_id)
    batch = await any_rt.store.get_batch(result.batch_id)
    assert states == {"completed": 4, "failed": 1}
    assert (batch.completed, batch.failed) == (4, 1)


async def test_resume_with_a_different_input_size_is_refused(rt: Runtime) -> None:
    first = await rt.run_batch("qa", questions(3))
    with pytest.raises(ValidationError, match="3 items"):
        await rt.run_batch("qa", questions(4), resume=first.batch_id)


async def test_resume_of_another_programs_batch_is_refused(rt: Runtime) -> None:
    first = await rt.run_batch("qa", questions(1))
    with pytest.raises(ValidationError, match="runs program 'qa'"):
        await rt.run_batch("other", questions(1), resume=first.batch_id)

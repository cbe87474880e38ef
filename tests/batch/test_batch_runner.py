"""run_batch in one process: concurrency, order, failures, limits, progress and statistics."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from tests.batch._support import Scripted, questions
from tests.support.store_reads import batch_executions

from dspex import BatchResult, MaxErrorsExceeded, ProgressEvent, ValidationError
from dspex.runtime import Runtime

pytestmark = pytest.mark.looptime


async def test_batch_never_exceeds_concurrency_limit(rt: Runtime, handler: Scripted) -> None:
    result = await rt.run_batch("qa", questions(60), max_concurrency=7)
    assert result.stats.completed == 60
    assert handler.peak == 7


async def test_results_come_back_in_input_order(rt: Runtime, handler: Scripted) -> None:
    result = await rt.run_batch("qa", questions(25), max_concurrency=5)
    assert result.results is not None
    assert [r.index for r in result.results] == list(range(25))
    assert [r.outputs for r in result.results] == [{"answer": f"answer to q{i}"} for i in range(25)]


async def test_every_item_is_an_execution_of_the_batch(rt: Runtime) -> None:
    result = await rt.run_batch("qa", questions(4))
    records = await batch_executions(rt.store, result.batch_id)
    assert [(r.batch_index, r.status.value) for r in records] == [
        (i, "completed") for i in range(4)
    ]
    batch = await rt.store.get_batch(result.batch_id)
    assert (batch.status.value, batch.completed, batch.total) == ("completed", 4, 4)


async def test_failed_items_are_reported_with_their_code(rt: Runtime, handler: Scripted) -> None:
    handler.fail_permanently = {"q1", "q3"}
    result = await rt.run_batch("qa", questions(5))
    assert result.results is not None
    assert [r.status for r in result.results] == [
        "completed",
        "failed",
        "completed",
        "failed",
        "completed",
    ]
    assert result.results[1].error is not None
    assert result.results[1].error.code == "backend_bad_request"
    assert result.stats.errors == {"backend_bad_request": 2}
    assert result.status == "completed"
    assert not result.ok


async def test_retryable_failures_are_retried_per_item(rt: Runtime, handler: Scripted) -> None:
    handler.fail_first = {"q0": 1}
    result = await rt.run_batch("qa", questions(2), max_retries=2)
    assert result.stats.completed == 2
    assert result.stats.retries == 1


async def test_permanent_failures_are_not_retried(rt: Runtime, handler: Scripted) -> None:
    handler.fail_permanently = {"q0"}
    await rt.run_batch("qa", questions(1), max_retries=3)
    assert handler.calls["q0"] == 1


async def test_max_errors_stops_the_batch_with_a_typed_error(
    rt: Runtime, handler: Scripted
) -> None:
    handler.fail_permanently = {f"q{i}" for i in range(40)}
    with pytest.raises(MaxErrorsExceeded) as caught:
        await rt.run_batch("qa", questions(200), max_concurrency=4, max_errors=2)
    batch = await rt.store.get_batch(caught.value.batch_id or "")
    assert batch.status.value == "failed"
    assert 3 <= batch.failed < 40
    assert batch.cancelled > 0
    assert len(handler.calls) < 40
    states = await rt.store.batch_item_states(batch.id)
    assert "running" not in states


async def test_fail_fast_stops_at_the_first_failure(rt: Runtime, handler: Scripted) -> None:
    handler.fail_permanently = {"q0"}
    with pytest.raises(MaxErrorsExceeded):
        await rt.run_batch("qa", questions(50), max_concurrency=1, continue_on_error=False)


async def test_item_timeout_fails_the_item_with_code_timeout(
    rt: Runtime, handler: Scripted
) -> None:
    handler.hang = {"q1"}
    result = await rt.run_batch("qa", questions(3), item_timeout=5, max_retries=0)
    assert result.results is not None
    assert result.results[1].error is not None
    assert result.results[1].error.code == "timeout"
    assert result.stats.completed == 2


async def test_deadline_cancels_what_is_left_and_leaves_it_resumable(
    rt: Runtime, handler: Scripted
) -> None:
    handler.latency = 1.0
    result = await rt.run_batch("qa", questions(20), max_concurrency=2, deadline=3.5)
    assert result.status == "cancelled"
    assert result.stop_reason == "deadline"
    states = await rt.store.batch_item_states(result.batch_id)
    assert "running" not in states
    assert states.get("cancelled", 0) >= 1


async def test_upfront_validation_reports_every_bad_index_and_runs_nothing(
    rt: Runtime, handler: Scripted
) -> None:
    items: list[object] = [{"question": "ok"}, {"nope": 1}, {"question": "ok"}, "text"]
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch("qa", items)  # type: ignore[arg-type]
    fields = [e.field for e in caught.value.errors]
    assert any(f.startswith("items[1]") for f in fields)
    assert any(f.startswith("items[3]") for f in fields)
    assert not any(f.startswith(("items[0]", "items[2]")) for f in fields)
    assert handler.calls == {}
    assert await rt.store.list_batches() == []


async def test_per_item_validation_fails_only_the_bad_items(rt: Runtime, handler: Scripted) -> None:
    items = [{"question": "ok"}, {"nope": 1}]
    result = await rt.run_batch("qa", items, validate="per_item")
    assert result.results is not None
    assert [r.status for r in result.results] == ["completed", "failed"]
    assert result.results[1].error is not None
    assert result.results[1].error.code == "validation_error"


async def test_malformed_jsonl_line_is_reported_with_its_line_number(
    rt: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "a"}\n\n{"question": \n{"question": "c"}\n')
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch("qa", path)
    assert caught.value.errors[0].field == "items[1]"
    assert "line 3" in caught.value.errors[0].message


async def test_a_jsonl_input_streams_results_to_the_out_file(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions(5)))
    out = tmp_path / "out.jsonl"
    result = await rt.run_batch("qa", path, out=out)
    assert result.results is None
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["index"], x["status"]) for x in lines] == [(i, "completed") for i in range(5)]
    assert lines[2]["outputs"] == {"answer": "answer to q2"}


async def test_a_generator_input_is_streamed_and_read_back_in_order(rt: Runtime) -> None:
    result = await rt.run_batch("qa", (q for q in questions(7)))
    assert result.results is None
    items = [item async for item in rt.batch_results(result.batch_id)]
    assert [i.index for i in items] == list(range(7))


async def test_progress_events_arrive_for_every_item(rt: Runtime) -> None:
    events: list[ProgressEvent] = []
    await rt.run_batch("qa", questions(10), on_progress=events.append)
    assert len(events) == 10
    assert [e.done for e in events] == list(range(1, 11))
    assert events[-1].eta_s == 0.0
    assert sorted(e.index for e in events if e.index is not None) == list(range(10))


async def test_async_progress_callbacks_are_awaited(rt: Runtime) -> None:
    seen: list[int] = []

    async def record(event: ProgressEvent) -> None:
        seen.append(event.done)

    await rt.run_batch("qa", questions(3), on_progress=record)
    assert seen == [1, 2, 3]


async def test_a_failing_progress_callback_does_not_stop_the_batch(rt: Runtime) -> None:
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("boom")

    result = await rt.run_batch("qa", questions(3), on_progress=broken)
    assert result.stats.completed == 3


async def test_statistics_describe_latency_throughput_and_tokens(rt: Runtime) -> None:
    result: BatchResult = await rt.run_batch("qa", questions(10), max_concurrency=10)
    stats = result.stats
    assert stats.success_rate == 1.0
    assert stats.p50_ms is not None
    assert stats.p95_ms is not None
    assert stats.max_ms is not None
    assert 10 <= stats.p50_ms <= stats.p95_ms <= stats.max_ms
    assert stats.throughput > 0
    assert stats.tokens["mock"]["total_tokens"] > 0


async def test_bad_options_are_rejected_before_anything_runs(rt: Runtime) -> None:
    with pytest.raises(ValidationError) as caught:
        await rt.run_batch("qa", questions(1), max_concurrency=0, validate="later")
    assert {e.field for e in caught.value.errors} == {"max_concurrency", "validate"}


async def test_cancelling_leaves_a_resumable_batch_with_no_running_items(
    rt: Runtime, handler: Scripted
) -> None:
    handler.latency = 1.0
    events: list[ProgressEvent] = []
    task = asyncio.create_task(
        rt.run_batch("qa", questions(30), max_concurrency=3, on_progress=events.append)
    )
    await asyncio.sleep(2.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    batch_id = events[0].batch_id
    batch = await rt.store.get_batch(batch_id)
    states = await rt.store.batch_item_states(batch_id)
    assert batch.status.value == "cancelled"
    assert "running" not in states
    assert states["completed"] == 6
    resumed = await rt.run_batch("qa", questions(30), resume=batch_id)
    assert resumed.stats.completed == 30
    assert resumed.stats.skipped == 6

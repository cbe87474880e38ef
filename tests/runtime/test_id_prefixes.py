"""``Runtime.resolve_id`` takes a unique id prefix as ``git`` does; ``run_batch(on_start=…)``
names the batch before any item runs; ``list_batches`` filters by program."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.runtime._support import QA, changed, make_runtime, ready

from dspex.errors import AmbiguousIdError, NotFoundError, ValidationError
from dspex.runtime import Runtime
from dspex.store import MemoryStore

BATCH_IDS = ("0190aaaa-0001", "0190aaab-0002", "0190bbbb-0003")


@pytest.fixture
async def rt() -> AsyncIterator[Runtime]:
    async with make_runtime(MemoryStore()) as runtime:
        await ready(runtime)
        for batch_id in BATCH_IDS:
            await runtime.store.create_batch("qa", 1, {}, 1, batch_id=batch_id)
        yield runtime


async def test_a_unique_prefix_resolves_to_the_whole_id(rt: Runtime) -> None:
    assert await rt.resolve_id("0190b", kind="batch") == "0190bbbb-0003"


async def test_a_whole_id_resolves_to_itself(rt: Runtime) -> None:
    assert await rt.resolve_id("0190aaab-0002", kind="batch") == "0190aaab-0002"


async def test_a_prefix_in_capitals_finds_the_lower_case_id(rt: Runtime) -> None:
    assert await rt.resolve_id("0190BBBB", kind="batch") == "0190bbbb-0003"


async def test_an_ambiguous_prefix_names_every_candidate(rt: Runtime) -> None:
    with pytest.raises(AmbiguousIdError) as caught:
        await rt.resolve_id("0190a", kind="batch")
    assert caught.value.code == "ambiguous_id"
    assert caught.value.candidates == ["0190aaaa-0001", "0190aaab-0002"]
    assert "matches 2 batches" in caught.value.message


async def test_an_ambiguous_prefix_lists_the_first_ten_candidates(rt: Runtime) -> None:
    for n in range(12):
        await rt.store.start_execution(
            "qa", 1, {}, worker_id="w", lease_seconds=30, execution_id=f"cafe{n:02d}"
        )
    with pytest.raises(AmbiguousIdError) as caught:
        await rt.resolve_id("cafe")
    assert len(caught.value.candidates) == 10
    assert "more than 10 executions" in caught.value.message


async def test_a_prefix_nothing_starts_with_is_not_found(rt: Runtime) -> None:
    with pytest.raises(NotFoundError, match="0190c"):
        await rt.resolve_id("0190c", kind="batch")


async def test_batch_and_execution_ids_are_resolved_apart(rt: Runtime) -> None:
    result = await rt.execute("qa", {"question": "q"})
    assert await rt.resolve_id(result.execution_id[:20]) == result.execution_id
    with pytest.raises(NotFoundError):
        await rt.resolve_id("0190b")


@pytest.mark.parametrize("text", ["", "   "])
async def test_an_empty_id_is_a_validation_error(rt: Runtime, text: str) -> None:
    with pytest.raises(ValidationError):
        await rt.resolve_id(text, kind="batch")


async def test_the_start_callback_gets_the_batch_id_before_any_item_runs(
    rt: Runtime, tmp_path: Path
) -> None:
    seen: list[tuple[str, int]] = []

    async def on_start(batch_id: str) -> None:
        seen.append((batch_id, (await rt.get_batch(batch_id)).completed))

    result = await rt.run_batch("qa", [{"question": "a"}, {"question": "b"}], on_start=on_start)
    assert seen == [(result.batch_id, 0)]
    again = await rt.run_batch(
        "qa", [{"question": "a"}, {"question": "b"}], resume=result.batch_id, on_start=on_start
    )
    assert seen[1] == (again.batch_id, 2)


async def test_a_failing_start_callback_does_not_stop_the_batch(rt: Runtime) -> None:
    def on_start(batch_id: str) -> None:
        raise RuntimeError("broken listener")

    result = await rt.run_batch("qa", [{"question": "a"}], on_start=on_start)
    assert result.ok


async def test_no_start_callback_runs_for_a_batch_refused_up_front(rt: Runtime) -> None:
    seen: list[str] = []
    with pytest.raises(ValidationError):
        await rt.run_batch("qa", [{"wrong": "a"}], on_start=seen.append)
    assert seen == []


async def test_batches_are_listed_for_one_program_with_their_config(rt: Runtime) -> None:
    await ready(rt, changed(QA, name="other"))
    mine = await rt.run_batch("qa", [{"question": "a"}], max_concurrency=3)
    await rt.run_batch("other", [{"question": "b"}])
    listed = await rt.list_batches(program="qa", limit=1)
    assert [b.batch_id for b in listed] == [mine.batch_id]
    assert listed[0].config["max_concurrency"] == 3
    assert await rt.list_batches(program="nope") == []

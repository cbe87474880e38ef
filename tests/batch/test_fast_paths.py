"""What makes batches fast without changing what they do: chunk hand-out between worker
processes, results kept in memory, and modules prepared before the first item."""

from __future__ import annotations

import asyncio
import itertools
import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tests.batch._support import questions

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.backends.retriever import clear_corpus_cache
from dspex.batch.inputs import RawItem, read_chunks
from dspex.batch.progress import ProgressEvent, ProgressTracker
from dspex.engine import Engine, Program
from dspex.errors import GraphError
from dspex.records import StepStatus
from dspex.runtime import Runtime


def _jsonl(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(n)))
    return path


def test_two_readers_sharing_a_counter_see_every_item_exactly_once(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "in.jsonl", 23)
    counter = itertools.count()
    first = read_chunks(path, 5, counter.__next__)
    second = read_chunks(path, 5, counter.__next__)
    seen: list[list[int]] = [[], []]
    # interleave the readers unevenly, as two workers of different speed would
    for turn in itertools.cycle([0, 0, 0, 1]):
        reader = first if turn == 0 else second
        raw = next(reader, None)
        if raw is None:
            rest = second if turn == 0 else first
            seen[1 - turn].extend(r.index for r in rest)
            break
        seen[turn].append(raw.index)
    assert sorted(seen[0] + seen[1]) == list(range(23))
    assert seen[0] == sorted(seen[0])
    assert seen[1] == sorted(seen[1])
    assert set(seen[0]).isdisjoint(seen[1])


def test_a_reader_takes_only_whole_chunks(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "in.jsonl", 12)
    handed = iter([1, 3])  # chunks of 4: items 4-7, then nothing past the end

    def take() -> int:
        return next(handed, 99)

    assert [r.index for r in read_chunks(path, 4, take)] == [4, 5, 6, 7]


def test_chunk_reading_skips_blank_lines_and_names_the_line_of_bad_json(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "a"}\n\n  \nnot json\n[1]\n')
    counter = itertools.count()
    items: Sequence[RawItem] = list(read_chunks(path, 2, counter.__next__))
    assert [(r.index, r.line) for r in items] == [(0, 1), (1, 4), (2, 5)]
    assert items[0].value == {"question": "a"}
    assert items[0].problem is None
    assert items[1].problem is not None
    assert items[1].problem.startswith("line 4: not valid JSON")
    assert items[2].problem == "line 5: expected an object of input fields, got list"


async def test_list_results_kept_in_memory_equal_what_the_store_holds(rt: Runtime) -> None:
    result = await rt.run_batch("qa", questions(30), max_concurrency=4)
    assert result.results is not None
    stored = [item async for item in rt.batch_results(result.batch_id)]
    assert [r.model_dump() for r in result.results] == [r.model_dump() for r in stored]


async def test_failed_items_kept_in_memory_keep_their_error(rt: Runtime) -> None:
    items: list[dict[str, object]] = [{"question": "fine"}, {"question": 3}]
    result = await rt.run_batch("qa", items, validate="per_item")
    assert result.results is not None
    stored = [item async for item in rt.batch_results(result.batch_id)]
    assert result.results[1].error is not None
    assert result.results[1].error.code == "validation_error"
    assert [r.model_dump() for r in result.results] == [r.model_dump() for r in stored]


class CountingEmbedder:
    """Counts what it embeds; deterministic and instant."""

    name = "counting"
    vocabulary = ("paris", "rome", "bread")

    def __init__(self) -> None:
        self.texts: list[str] = []

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return [[float(w in t.lower()) + 1e-3 for w in self.vocabulary] for t in texts]


def _rag(tmp_path: Path) -> Program:
    (tmp_path / "corpus.txt").write_text("Rome is in Italy.\nParis is in France.\nBread.\n")
    (tmp_path / "rag.yaml").write_text(
        textwrap.dedent(
            """
            name: rag
            signature: "q: str -> passages: list[str]"
            modules:
              r: {kind: retrieve, corpus: corpus.txt, k: 1, inputs: {query: $input.q}}
            """
        )
    )
    return Program.from_file(tmp_path / "rag.yaml")


async def test_preparing_a_program_embeds_its_corpus_before_the_first_run(tmp_path: Path) -> None:
    clear_corpus_cache()
    embedder = CountingEmbedder()
    engine = Engine(backends={}, embedder=embedder)
    program = _rag(tmp_path)
    await engine.prepare(program)
    assert "Paris is in France." in embedder.texts
    embedded = len(embedder.texts)
    result = await engine.run(program, {"q": "paris"})
    assert result.outputs == {"passages": ["Paris is in France."]}
    assert embedder.texts[embedded:] == ["paris"]  # the run embedded only its query
    await engine.aclose()


async def test_preparing_a_program_that_cannot_run_raises_every_time(tmp_path: Path) -> None:
    engine = Engine(backends={})
    program = Program.from_dict(
        {
            "name": "p",
            "signature": "q: str -> a: str",
            "modules": {"m": {"kind": "predict", "signature": "q: str -> a: str"}},
        }
    )
    for _ in range(2):
        with pytest.raises(GraphError, match="backend"):
            await engine.prepare(program)
        with pytest.raises(GraphError):
            await engine.run(program, {"q": "x"})
    await engine.aclose()


async def test_counting_without_a_listener_keeps_the_same_counts_as_emitting() -> None:
    events: list[ProgressEvent] = []
    ticks = itertools.count()
    silent = ProgressTracker("b", 3, completed=1, clock=lambda: float(next(ticks)))
    heard = ProgressTracker("b", 3, completed=1, callback=events.append)
    for status in ("completed", "failed"):
        silent.count(status)
        await heard.finished(0, status)
    assert (silent.done, silent.completed, silent.failed) == (heard.done, 2, 1)
    assert silent.event(None, None).rate == 2.0
    assert len(events) == 2


_ONE_MODULE = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}


async def test_a_single_module_raising_cancelled_itself_ends_cancelled_not_the_run() -> None:
    async def cancels(request: PredictRequest) -> dict[str, Any]:
        raise asyncio.CancelledError

    engine = Engine({"default": MockBackend(handler=cancels)})
    result = await engine.run(Program.from_dict(_ONE_MODULE), {"question": "hi"})
    assert [step.status for step in result.steps] == [StepStatus.CANCELLED]


@pytest.mark.parametrize(
    ("code", "message"), [(None, None), ("timeout", "too slow"), ("cancelled", None)]
)
def test_item_results_built_fast_equal_validated_ones(code: str | None, message: str) -> None:
    from dspex.actions.batch import ItemResult, _item
    from dspex.actions.models import ErrorInfo

    fast = _item(3, "e1", "failed" if code else "completed", {"a": 1}, code, message, 2.5)
    error = None if code is None else ErrorInfo(code=code, message=message or "")
    slow = ItemResult(
        index=3,
        execution_id="e1",
        status="failed" if code else "completed",
        outputs={"a": 1},
        error=error,
        duration_ms=2.5,
    )
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    if code is not None:
        assert fast.error is not None
        assert slow.error is not None
        assert fast.error.model_fields_set == {"code", "message"}
    with pytest.raises(ValueError, match="frozen"):
        fast.index = 4  # type: ignore[misc]
    assert fast.to_line() == slow.to_line()


def test_a_list_validated_in_one_pass_equals_item_by_item() -> None:
    from dspex.batch.inputs import check_item, open_source, validate_all
    from dspex.signatures.signature import Signature

    signature = Signature.parse("question: str, k: optional[int], tags: list[str] -> answer: str")
    items: list[Any] = [{"question": f"q{i}", "k": i, "tags": ("a", "b")} for i in range(50)]
    items.append({"question": "no k", "tags": []})
    bulk = validate_all(open_source(items), signature)
    one_by_one = [check_item(RawItem(i, None, v, None), signature)[0] for i, v in enumerate(items)]
    assert bulk == one_by_one
    assert bulk is not None
    assert bulk[7] == {"question": "q7", "k": 7, "tags": ["a", "b"]}  # coerced as one by one
    assert bulk[50] == {"question": "no k", "k": None, "tags": []}
    assert items[7] == {"question": "q7", "k": 7, "tags": ("a", "b")}  # the caller's are intact


def test_a_bad_item_in_a_list_is_still_named_with_its_index() -> None:
    from dspex.batch.inputs import open_source, validate_all
    from dspex.errors import ValidationError
    from dspex.signatures.signature import Signature

    signature = Signature.parse("question: str -> answer: str")
    items: list[Any] = [{"question": f"q{i}"} for i in range(10)]
    items[4] = {"question": 5, "extra": 1}
    items[8] = "not an object"
    with pytest.raises(ValidationError) as caught:
        validate_all(open_source(items), signature)
    fields = sorted({e.field for e in caught.value.errors})
    assert fields == ["items[4].extra", "items[4].question", "items[8]"]
    assert str(caught.value).startswith("2 of 10 batch items are invalid")


async def test_a_hurried_recorder_writes_without_waiting_for_its_interval(tmp_path: Path) -> None:
    from dspex.batch.recorder import Recorder
    from dspex.records import ExecutionStatus, FinishRequest
    from dspex.store import MemoryStore

    store = MemoryStore()
    await store.put_program("qa", {}, "h")
    execution = await store.start_execution(
        "qa", 1, {"question": "q"}, worker_id="w", lease_seconds=60
    )
    groups: list[list[bool]] = []
    written = asyncio.Event()

    async def on_written(group: Sequence[tuple[FinishRequest, int, bool]]) -> None:
        groups.append([ok for _, _, ok in group])
        written.set()

    # an hour between groups and a group size never reached: only hurry() writes it now
    recorder: Recorder[int] = Recorder(store, on_written, interval=3600.0, size=1000)
    task = recorder.start()
    request = FinishRequest(
        execution.id, execution.lease_token or "", ExecutionStatus.COMPLETED, outputs={"a": 1}
    )
    recorder.add(request, 0)
    await asyncio.sleep(0)
    assert not written.is_set()
    recorder.hurry()
    await asyncio.wait_for(written.wait(), timeout=30)
    assert groups == [[True]]
    assert (await store.get_execution(execution.id)).status is ExecutionStatus.COMPLETED
    await recorder.close()
    assert task.done()

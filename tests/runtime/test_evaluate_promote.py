"""Runtime.evaluate / compare / promote / export_dataset on every store, with a scripted backend.

The backend answers from a table: a module configured with ``temperature: 0`` ("good") answers
correctly, any other ("bad") answers ``"wrong"``, and the question ``"boom"`` fails for good
while ``State.broken`` is set. So version 1 ("bad") and version 2 ("good") of one program score
differently on the same devset, and a batch can be made to fail and then resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.runtime._support import make_runtime
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind

import dspex
from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.errors import (
    BadRequestError,
    MetricError,
    ProgramStateError,
    PromotionRefusedError,
    ValidationError,
)
from dspex.runtime import Runtime

ANSWERS = {"capital of France": "Paris", "2 + 2": "4", "colour of the sky": "blue", "boom": "x"}


class State:
    broken = True
    hang = False


async def answer(request: PredictRequest) -> dict[str, Any]:
    question = request.inputs["question"]
    if question == "boom" and State.hang:
        await asyncio.Event().wait()  # until the batch is cancelled
    if question == "boom" and State.broken:
        raise BadRequestError("the model refuses this one")
    good = request.config.get("temperature") == 0
    return {"answer": ANSWERS[question] if good else "wrong"}


def spec(temperature: float) -> dict[str, Any]:
    return {
        "name": "qa",
        "signature": "question: str -> answer: str",
        "modules": {
            "answer": {
                "kind": "predict",
                "signature": "question: str -> answer: str",
                "config": {"temperature": temperature},
            }
        },
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def rt(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Runtime]:
    State.broken = True
    State.hang = False
    backend = MockBackend("default", handler=answer)
    async with (
        open_kind(request.param, request, clock) as store,
        make_runtime(store, {"default": backend}) as runtime,
    ):
        for temperature in (0.7, 0.0):  # v1 answers badly, v2 well
            info = await runtime.register(spec(temperature))
            assert (await runtime.initialize("qa", info.version)).status == "ready"
        yield runtime


def devset(tmp_path: Path, rows: list[dict[str, Any]], name: str = "dev.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD_ROWS = [
    {"question": "capital of France", "answer": "Paris"},
    {"question": "2 + 2", "answer": "4"},
    {"question": "colour of the sky", "answer": "Blue."},
]


# --------------------------------------------------------------------------------- evaluate


async def test_evaluate_scores_every_item_and_records_it(rt: Runtime, tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, {"question": "boom", "answer": "x"}]
    out = tmp_path / "items.jsonl"
    result = await rt.evaluate(
        "qa", devset(tmp_path, rows), metric="exact_match", version=2, out=out
    )
    assert result.status == "completed"
    assert (result.program, result.version, result.metric) == ("qa", 2, "exact_match")
    assert (result.n, result.failed) == (4, 1)
    assert result.score == pytest.approx(3 / 4)  # the failed item scores 0
    scores = [s async for s in rt.store.iter_item_scores(result.evaluation_id)]
    assert [(s.index, s.status, s.score) for s in scores] == [
        (0, "completed", 1.0),
        (1, "completed", 1.0),
        (2, "completed", 1.0),
        (3, "failed", 0.0),
    ]
    detail = await rt.get_execution(scores[0].execution_id or "")
    assert detail.batch_id == result.batch_id  # each score sits with its execution
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["score"] for line in lines] == [1.0, 1.0, 1.0, 0.0]
    assert lines[3]["error"]["code"] == "backend_bad_request"
    assert lines[0]["outputs"] == {"answer": "Paris"}
    listed = await rt.list_evaluations("qa")
    assert [e.evaluation_id for e in listed] == [result.evaluation_id]


async def test_evaluate_uses_the_current_version_by_default(rt: Runtime, tmp_path: Path) -> None:
    path = devset(tmp_path, GOOD_ROWS)
    newest = await rt.evaluate("qa", path, metric="exact_match")
    assert (newest.version, newest.score) == (2, 1.0)
    await rt.promote("qa", 1, force=True)
    current = await rt.evaluate("qa", path, metric="exact_match")
    assert (current.version, current.score) == (1, 0.0)


async def test_a_devset_that_does_not_fit_the_program_names_every_bad_line(
    rt: Runtime, tmp_path: Path
) -> None:
    rows = [
        {"question": "2 + 2", "answer": "4"},
        {"answer": "4"},
        {"question": "2 + 2"},
        {"question": "2 + 2", "grade": "A"},
    ]
    path = devset(tmp_path, rows)
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValidationError) as info:
        await rt.evaluate("qa", path, metric="exact_match")
    codes = [(e.field, e.code) for e in info.value.errors]
    assert codes == [
        ("devset[1]", "missing_input"),
        ("devset[2]", "no_label"),
        ("devset[3]", "unknown_label"),
        ("devset[4]", "invalid_item"),
    ]
    assert await rt.list_batches() == []  # nothing ran


async def test_a_bad_metric_is_refused_before_anything_runs(rt: Runtime, tmp_path: Path) -> None:
    path = devset(tmp_path, GOOD_ROWS)
    with pytest.raises(MetricError, match="exact_match, f1"):
        await rt.evaluate("qa", path, metric="accuracy")
    with pytest.raises(MetricError, match="'answer' field"):
        await _answer_exact_match_without_answer(rt, tmp_path)
    with pytest.raises(ValidationError, match="cannot read the devset"):
        await rt.evaluate("qa", tmp_path / "missing.jsonl", metric="f1")
    assert await rt.list_batches() == []


async def _answer_exact_match_without_answer(rt: Runtime, tmp_path: Path) -> None:
    await rt.register(
        {
            "name": "grader",
            "signature": "question: str -> grade: str",
            "modules": {"g": {"kind": "predict", "signature": "question: str -> grade: str"}},
        }
    )
    await rt.initialize("grader")
    rows = [{"question": "2 + 2", "grade": "A"}]
    await rt.evaluate("grader", devset(tmp_path, rows, "g.jsonl"), metric="answer_exact_match")


async def test_an_interrupted_evaluation_resumes_and_completes(rt: Runtime, tmp_path: Path) -> None:
    path = devset(tmp_path, [*GOOD_ROWS, {"question": "boom", "answer": "x"}])
    State.hang = True
    started: list[str] = []
    task = asyncio.create_task(
        rt.evaluate(
            "qa",
            path,
            metric="exact_match",
            version=2,
            max_concurrency=1,
            on_progress=lambda event: started.append(event.batch_id),
        )
    )
    for _ in range(2000):  # until the three good items are done and "boom" hangs
        if len(started) >= 3:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    batch_id = started[0]
    assert (await rt.get_batch(batch_id)).status == "cancelled"
    evaluation = await rt.store.evaluation_for_batch(batch_id)
    assert evaluation is not None
    assert evaluation.status == "running"
    State.hang = State.broken = False  # the backend recovers
    resumed = await rt.evaluate("qa", path, metric="exact_match", resume=batch_id)
    assert resumed.status == "completed"
    assert resumed.evaluation_id == evaluation.id
    assert resumed.batch_id == batch_id
    assert (resumed.version, resumed.n, resumed.failed, resumed.score) == (2, 4, 0, 1.0)
    again = await rt.evaluate("qa", path, metric="exact_match", resume=batch_id)
    assert again.score == 1.0  # a completed evaluation is read back, not run again


async def test_resuming_with_another_devset_or_metric_is_refused(
    rt: Runtime, tmp_path: Path
) -> None:
    path = devset(tmp_path, GOOD_ROWS)
    first = await rt.evaluate("qa", path, metric="exact_match")
    other = devset(tmp_path, GOOD_ROWS[:2], "other.jsonl")
    with pytest.raises(ValidationError) as info:
        await rt.evaluate("qa", other, metric="f1", resume=first.batch_id)
    assert {e.field for e in info.value.errors} == {"metric", "devset"}
    batch = await rt.run_batch("qa", [{"question": "2 + 2"}])
    with pytest.raises(ValidationError, match="not an evaluation"):
        await rt.evaluate("qa", path, metric="exact_match", resume=batch.batch_id)


async def test_compare_pairs_the_items_of_two_versions(rt: Runtime, tmp_path: Path) -> None:
    path = devset(tmp_path, GOOD_ROWS)
    result = await rt.compare("qa", path, metric="exact_match", versions=(1, 2), seed=7)
    assert (result.a.version, result.a.score) == (1, 0.0)
    assert (result.b.version, result.b.score) == (2, 1.0)
    assert result.difference == 1.0
    assert result.interval == (1.0, 1.0)  # every paired difference is 1
    assert result.n == 3
    assert isinstance(result, dspex.ComparisonResult)


# --------------------------------------------------------------------------------- promote


async def test_the_gate_refuses_a_worse_version_and_names_both_scores(
    rt: Runtime, tmp_path: Path
) -> None:
    path = devset(tmp_path, GOOD_ROWS)
    first = await rt.promote("qa", 2, devset=path, metric="exact_match")
    assert (first.version, first.score, first.previous_score) == (2, 1.0, 0.0)
    assert first.previous_version == 1
    assert not first.forced
    with pytest.raises(PromotionRefusedError) as info:
        await rt.promote("qa", 1, devset=path, metric="exact_match")
    assert (info.value.score, info.value.previous_score) == (0.0, 1.0)
    assert "0.0000" in info.value.message
    assert "1.0000" in info.value.message
    assert await rt.current_version("qa") == 2
    # both versions' scores were reused: two evaluations in all, none run for the refusal
    assert len(await rt.list_evaluations("qa")) == 2


async def test_min_improvement_raises_the_bar(rt: Runtime, tmp_path: Path) -> None:
    path = devset(tmp_path, [*GOOD_ROWS, {"question": "boom", "answer": "x"}])
    await rt.promote("qa", 1, force=True)
    with pytest.raises(PromotionRefusedError, match=r"\+ 0.9"):
        await rt.promote("qa", 2, devset=path, metric="exact_match", min_improvement=0.9)
    done = await rt.promote("qa", 2, devset=path, metric="exact_match", min_improvement=0.5)
    assert (done.score, done.previous_score, done.min_improvement) == (0.75, 0.0, 0.5)


async def test_the_current_version_is_what_execute_and_batches_run(
    rt: Runtime, tmp_path: Path
) -> None:
    assert (await rt.execute("qa", {"question": "2 + 2"})).outputs == {"answer": "4"}
    await rt.promote("qa", 1, force=True)
    assert (await rt.execute("qa", {"question": "2 + 2"})).outputs == {"answer": "wrong"}
    batch = await rt.run_batch("qa", [{"question": "2 + 2"}])
    assert batch.program_version == 1
    await rt.register(spec(0.3))  # a new draft no longer changes what runs
    assert (await rt.execute("qa", {"question": "2 + 2"})).outputs == {"answer": "wrong"}
    infos = {i.version: i.current for i in await rt.list_programs(all_versions=True)}
    assert infos == {1: True, 2: False, 3: False}
    assert (await rt.get_program("qa", 1)).current


async def test_rollback_is_a_forced_promotion_of_the_older_version(
    rt: Runtime, tmp_path: Path
) -> None:
    await rt.promote("qa", 2, force=True, promoted_by="alice")
    back = await rt.promote("qa", 1, force=True, promoted_by="bob")
    assert (back.version, back.previous_version, back.forced) == (1, 2, True)
    history = await rt.list_promotions("qa")
    assert [(p.version, p.promoted_by, p.forced) for p in history] == [
        (1, "bob", True),
        (2, "alice", True),
    ]


async def test_promote_needs_a_ready_version_and_a_devset_unless_forced(
    rt: Runtime, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match="needs a devset and a metric"):
        await rt.promote("qa", 2)
    with pytest.raises(ValidationError, match="both a devset and a metric"):
        await rt.promote("qa", 2, metric="f1")
    with pytest.raises(ValidationError, match="finite and >= 0"):
        await rt.promote("qa", 2, force=True, min_improvement=-1)
    draft = await rt.register(spec(0.5))
    with pytest.raises(ProgramStateError, match="not ready"):
        await rt.promote("qa", draft.version, force=True)
    assert await rt.list_promotions("qa") == []


# --------------------------------------------------------------------------------- datasets


async def test_export_writes_examples_that_evaluate_reads_back(rt: Runtime, tmp_path: Path) -> None:
    for question in ("capital of France", "2 + 2", "boom"):
        await rt.execute("qa", {"question": question}, version=2)
    out = tmp_path / "export.jsonl"
    done = await rt.export_dataset("qa", out)
    assert (done.count, done.with_outputs, done.statuses) == (2, 2, ["completed"])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(line["question"], line["answer"]) for line in lines} == {
        ("capital of France", "Paris"),
        ("2 + 2", "4"),
    }
    assert lines[0]["_dspex"]["status"] == "completed"
    again = await rt.evaluate("qa", out, metric="exact_match", version=2)
    assert (again.n, again.score) == (2, 1.0)

    stream = io.StringIO()
    failed = await rt.export_dataset("qa", stream, status="failed")
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert failed.count == 1
    assert failed.out is None
    assert line["question"] == "boom"
    assert "answer" not in line
    assert line["_dspex"]["error"]["code"] == "backend_bad_request"


async def test_export_filters_by_version_age_and_limit(
    rt: Runtime, tmp_path: Path, clock: FakeClock
) -> None:
    await rt.execute("qa", {"question": "2 + 2"}, version=1)
    clock.advance(3 * 86400)
    await rt.execute("qa", {"question": "2 + 2"}, version=2)
    await rt.execute("qa", {"question": "capital of France"}, version=2)
    assert (await rt.export_dataset("qa", tmp_path / "a", status="all")).count == 3
    assert (await rt.export_dataset("qa", tmp_path / "b", version=1)).count == 1
    assert (await rt.export_dataset("qa", tmp_path / "c", since="1d")).count == 2
    assert (await rt.export_dataset("qa", tmp_path / "d", since=3600.0, limit=1)).count == 1
    with pytest.raises(ValidationError, match="completed, failed or all"):
        await rt.export_dataset("qa", tmp_path / "e", status="running")
    with pytest.raises(ValidationError, match="must be >= 1"):
        await rt.export_dataset("qa", tmp_path / "e", limit=0)
    with pytest.raises(ValidationError, match="cannot write"):
        await rt.export_dataset("qa", tmp_path / "no" / "such" / "dir.jsonl")


async def test_an_evaluation_stopped_by_its_deadline_is_incomplete_and_resumable(
    rt: Runtime, tmp_path: Path
) -> None:
    path = devset(tmp_path, [*GOOD_ROWS, {"question": "boom", "answer": "x"}])
    State.hang = True
    stopped = await rt.evaluate("qa", path, metric="exact_match", version=2, deadline=0.5)
    assert (stopped.status, stopped.score, stopped.failed) == ("incomplete", None, None)
    assert stopped.stats is not None
    State.hang = State.broken = False
    done = await rt.evaluate("qa", path, metric="exact_match", resume=stopped.batch_id)
    assert (done.status, done.score, done.evaluation_id) == (
        "completed",
        1.0,
        stopped.evaluation_id,
    )


def test_the_paired_bootstrap_is_seeded_and_brackets_the_difference() -> None:
    import random

    from dspex.actions.evaluate import paired_bootstrap

    rng = random.Random(1)
    a = [float(rng.random() < 0.5) for _ in range(200)]
    b = [float(rng.random() < 0.7) for _ in range(200)]
    low, high = paired_bootstrap(a, b, seed=3)
    difference = (sum(b) - sum(a)) / len(a)
    assert low < difference < high
    assert paired_bootstrap(a, b, seed=3) == (low, high)
    assert paired_bootstrap(a, b, seed=4) != (low, high)
    with pytest.raises(ValidationError, match="same, non-zero number"):
        paired_bootstrap(a, b[:10])


async def test_compare_refuses_evaluations_of_different_devsets(
    rt: Runtime, tmp_path: Path
) -> None:
    from dspex.actions.evaluate import compare

    first = await rt.evaluate("qa", devset(tmp_path, GOOD_ROWS), metric="exact_match")
    other = devset(tmp_path, GOOD_ROWS[:1], "other.jsonl")
    second = await rt.evaluate("qa", other, metric="f1")
    with pytest.raises(ValidationError) as info:
        await compare(rt.store, first, second)
    assert {e.field for e in info.value.errors} == {"devset", "metric"}

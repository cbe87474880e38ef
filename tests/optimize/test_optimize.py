"""``Runtime.optimize``: DSPy's optimizers over stored programs, on deterministic LMs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM

import dspex
from dspex.actions.optimize import LINEAGE_KEY, dataset_hash
from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.mock import MockBackend
from dspex.config import OptimizeSettings, Settings
from dspex.errors import MetricError, ModuleError, NotFoundError, ValidationError

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}
ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]


def _answers() -> dict[str, dict[str, str]]:
    """Right for even questions, wrong for odd ones (DummyLM finds the key in the prompt)."""
    return {f"q{i}": {"answer": f"a{i}" if i % 2 == 0 else "wrong"} for i in range(8)}


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def lm() -> DummyLM:
    return DummyLM(_answers())


@pytest.fixture
async def rt(lm: DummyLM) -> AsyncIterator[dspex.Runtime]:
    settings = Settings(optimize=OptimizeSettings(num_candidates=2))
    backends = {"default": DspyBackend("default", lm=lm)}
    async with dspex.Runtime.open("memory://", backends=backends, settings=settings) as runtime:
        await runtime.register(QA)
        yield runtime


async def test_bootstrap_few_shot_writes_a_draft_version_with_the_demos_dspy_selects(
    rt: dspex.Runtime, tmp_path: Path
) -> None:
    run = await rt.optimize("qa", _write(tmp_path / "train.jsonl", ROWS), metric="exact_match")

    # the same optimizer on a plain dspy.Predict and an identical LM selects the same demos
    plain = dspy.BootstrapFewShot(
        metric=dspex_metric, max_bootstrapped_demos=4, max_labeled_demos=4
    )
    train = [dspy.Example(**r).with_inputs("question") for r in ROWS]
    with dspy.context(lm=DummyLM(_answers())):
        compiled = plain.compile(dspy.Predict("question -> answer"), trainset=train)
    expected = [dict(demo.items()) for demo in compiled.demos]

    assert (run.status, run.parent_version, run.version) == ("completed", 1, 2)
    assert (run.optimizer, run.metric, run.trainset_size) == (
        "bootstrap_few_shot",
        "exact_match",
        8,
    )
    assert run.trainset_hash == dataset_hash(ROWS)
    assert (run.baseline_score, run.score) == (0.5, 0.5)
    spec = (await rt.load_program("qa", 2)).to_dict()
    assert spec["modules"]["answer"]["demos"] == expected
    assert [d["question"] for d in expected] == ["q0", "q2", "q4", "q6"]
    info = await rt.get_program("qa", 2)
    assert info.status == "draft"
    lineage = spec["metadata"][LINEAGE_KEY]
    assert lineage["optimization_id"] == run.optimization_id
    assert (lineage["parent_version"], lineage["optimizer"], lineage["score"]) == (
        1,
        "bootstrap_few_shot",
        0.5,
    )
    assert lineage["trainset_hash"] == run.trainset_hash
    assert [(t.number, t.detail.get("kind")) for t in run.trials] == [
        (0, "baseline"),
        (1, "result"),
    ]


def dspex_metric(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


async def test_every_lm_call_the_optimizer_makes_is_counted_under_the_run(
    rt: dspex.Runtime, lm: DummyLM, tmp_path: Path
) -> None:
    run = await rt.optimize("qa", _write(tmp_path / "t.jsonl", ROWS), metric="exact_match")
    stats = run.stats
    assert stats["lm_calls"] == len(lm.history) > 16  # baseline 8 + bootstrapping + result 8
    assert stats["program_calls"] == stats["lm_calls"]
    assert (stats["failed_calls"], stats["failed_lm_calls"]) == (0, 0)
    assert set(stats["usage"]) == {"dummy"}
    listed = await rt.list_optimizations(program="qa")
    assert [r.optimization_id for r in listed] == [run.optimization_id]
    assert (await rt.get_optimization(run.optimization_id)).stats == stats


async def test_a_second_run_is_answered_from_the_response_cache_with_the_same_demos(
    rt: dspex.Runtime, lm: DummyLM, tmp_path: Path
) -> None:
    train = _write(tmp_path / "t.jsonl", ROWS)
    first = await rt.optimize("qa", train, metric="exact_match")
    calls = len(lm.history)
    assert first.stats["cache_hits"] == 0  # every request of one run differs (demos, inputs)
    second = await rt.optimize("qa", train, metric="exact_match", version=1)
    assert len(lm.history) == calls  # nothing reached the LM
    assert second.stats["lm_calls"] == 0
    assert second.stats["cache_hits"] == first.stats["program_calls"]
    # the hits still feed DSPy's traces: bootstrapping picks the same demos
    demos = [
        (await rt.load_program("qa", v)).to_dict()["modules"]["answer"]["demos"] for v in (2, 3)
    ]
    assert demos[0] == demos[1]
    assert (second.baseline_score, second.score) == (first.baseline_score, first.score)
    third = await rt.optimize("qa", train, metric="exact_match", version=1, cache="off")
    assert len(lm.history) == 2 * calls
    assert third.stats["cache_hits"] == 0


async def test_a_valset_is_what_both_scores_are_measured_on(
    rt: dspex.Runtime, tmp_path: Path
) -> None:
    val = [ROWS[0], ROWS[2]]
    run = await rt.optimize(
        "qa",
        _write(tmp_path / "t.jsonl", ROWS),
        metric="exact_match",
        valset=_write(tmp_path / "v.jsonl", val),
        seed=3,
        max_demos=2,
    )
    assert (run.valset_size, run.valset_hash, run.seed) == (2, dataset_hash(val), 3)
    assert (run.baseline_score, run.score) == (1.0, 1.0)
    assert run.settings == {"max_bootstrapped_demos": 2, "max_labeled_demos": 2}
    demos = (await rt.load_program("qa", run.version)).to_dict()["modules"]["answer"]["demos"]
    assert len(demos) == 2


async def test_bootstrap_random_search_records_each_candidate_as_a_trial(
    rt: dspex.Runtime, tmp_path: Path
) -> None:
    run = await rt.optimize(
        "qa",
        ROWS,
        metric="exact_match",
        optimizer="bootstrap_random_search",
        max_demos=2,
    )
    assert run.status == "completed"
    assert run.settings["num_candidate_programs"] == 2
    middle = run.trials[1:-1]
    # seeds -3..1: zero-shot, labelled only, unshuffled, then two random candidates
    assert sorted(t.detail["seed"] for t in middle) == [-3, -2, -1, 0, 1]
    assert all(t.score is not None and 0.0 <= t.score <= 1.0 for t in middle)


async def test_bad_arguments_are_refused_before_anything_is_recorded(
    rt: dspex.Runtime, tmp_path: Path
) -> None:
    train = _write(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(ValidationError) as unknown:
        await rt.optimize("qa", train, metric="exact_match", optimizer="simba")
    assert unknown.value.errors[0].code == "unknown_optimizer"
    with pytest.raises(MetricError):
        await rt.optimize("qa", train, metric="no_such_metric")
    bad = _write(tmp_path / "bad.jsonl", [{"answer": "a"}, {"question": "q"}])
    with pytest.raises(ValidationError) as unfit:
        await rt.optimize("qa", bad, metric="exact_match")
    assert [(e.field, e.code) for e in unfit.value.errors] == [
        ("trainset[0]", "missing_input"),
        ("trainset[1]", "no_label"),
    ]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "a"}\nnot json\n')
    with pytest.raises(ValidationError) as unreadable:
        await rt.optimize("qa", broken, metric="exact_match")
    assert unreadable.value.errors[0].field == "trainset[1]"
    with pytest.raises(ValidationError):
        await rt.optimize("qa", train, metric="exact_match", max_demos=-1)
    with pytest.raises(NotFoundError):
        await rt.optimize("missing", train, metric="exact_match")
    assert await rt.list_optimizations() == []


async def test_gepa_without_a_language_model_is_a_config_error(tmp_path: Path) -> None:
    backends = {"default": MockBackend("default")}
    async with dspex.Runtime.open("memory://", backends=backends) as runtime:
        await runtime.register(QA)
        with pytest.raises(dspex.ConfigError, match="no language model"):
            await runtime.optimize("qa", ROWS, metric="exact_match", optimizer="gepa")
        assert await runtime.list_optimizations() == []


async def test_a_run_whose_program_always_fails_is_recorded_failed(tmp_path: Path) -> None:
    backends = {"default": MockBackend("default", failure_rate=1.0, seed=0)}
    async with dspex.Runtime.open("memory://", backends=backends) as runtime:
        await runtime.register(QA)
        rows = [{"question": f"q{i}", "answer": "x"} for i in range(12)]
        with pytest.raises(ModuleError):
            await runtime.optimize("qa", rows, metric="exact_match")
        (run,) = await runtime.list_optimizations()
        assert run.status == "failed"
        assert run.error is not None
        assert run.error.startswith("module_failed")
        assert run.version is None
        assert run.stats["failed_calls"] == run.stats["program_calls"] > 0
        assert [p.version for p in await runtime.list_programs(all_versions=True)] == [1]


async def test_by_default_the_current_version_is_optimized(rt: dspex.Runtime) -> None:
    await rt.initialize("qa", 1)
    changed = {**QA, "description": "a second version"}
    await rt.register(changed)
    await rt.promote("qa", 1, force=True)
    run = await rt.optimize("qa", ROWS, metric="exact_match", max_demos=1)
    assert (run.parent_version, run.version) == (1, 3)

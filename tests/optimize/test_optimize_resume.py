"""Resumable optimization runs: interrupted, then resumed with what they recorded (in process;
``tests/crash/test_optimize_crash.py`` kills a real ``dspex optimize`` process)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from dspy.utils import DummyLM

import dspex
from dspex.actions.optimize import optimization_info
from dspex.backends.dspy_backend import DspyBackend
from dspex.config import OptimizeSettings, Settings
from dspex.errors import NotFoundError, OptimizationError, ValidationError
from dspex.records import OptimizationStatus
from dspex.store.optimizations import NewOptimization

QA: dict[str, Any] = {
    "name": "qa",
    "signature": "question: str -> answer: str",
    "modules": {"answer": {"kind": "predict", "signature": "question: str -> answer: str"}},
}
ROWS = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(8)]
SEARCH = {"metric": "exact_match", "optimizer": "bootstrap_random_search", "max_demos": 2}


def _answers() -> dict[str, dict[str, str]]:
    """Right for even questions, wrong for odd ones (DummyLM finds the key in the prompt)."""
    return {f"q{i}": {"answer": f"a{i}" if i % 2 == 0 else "wrong"} for i in range(8)}


class _Env:
    def __init__(self, rt: dspex.Runtime, lm: DummyLM) -> None:
        self.rt = rt
        self.lm = lm

    @property
    def calls(self) -> int:
        return len(self.lm.history)


async def _open() -> AsyncIterator[_Env]:
    lm = DummyLM(_answers())
    settings = Settings(optimize=OptimizeSettings(num_candidates=2))
    backends = {"default": DspyBackend("default", lm=lm)}
    async with dspex.Runtime.open("memory://", backends=backends, settings=settings) as rt:
        await rt.register(QA)
        yield _Env(rt, lm)


@pytest.fixture
async def env() -> AsyncIterator[_Env]:
    async for opened in _open():
        yield opened


@pytest.fixture
async def reference() -> AsyncIterator[_Env]:
    """Another runtime, with its own database and LM, for the run nobody interrupted."""
    async for opened in _open():
        yield opened


async def _interrupted(
    rt: dspex.Runtime, stop_when: Callable[[dspex.OptimizationEvent], bool], **options: Any
) -> str:
    """Start a run and cancel it as soon as ``stop_when(event)``; its id."""
    tasks: list[asyncio.Task[Any]] = []
    events: list[dspex.OptimizationEvent] = []

    def on_progress(event: dspex.OptimizationEvent) -> None:
        events.append(event)
        if stop_when(event):
            tasks[0].cancel()

    handle = await rt.start_optimization("qa", ROWS, on_progress=on_progress, **options)
    tasks.append(handle.task)
    with pytest.raises(asyncio.CancelledError):
        await handle.task
    assert events[0].phase == "started"
    assert events[0].optimization_id == handle.optimization_id
    return handle.optimization_id


def _candidate_seed(event: dspex.OptimizationEvent) -> object:
    return event.trial.detail.get("seed") if event.trial is not None else None


async def test_a_cancelled_random_search_resumes_without_scoring_its_candidates_again(
    env: _Env, reference: _Env
) -> None:
    whole = await reference.rt.optimize("qa", ROWS, **SEARCH)
    expected = (await reference.rt.load_program("qa", whole.version)).to_dict()["modules"]

    run_id = await _interrupted(
        env.rt, lambda e: e.phase == "candidate" and _candidate_seed(e) == -2, **SEARCH
    )
    stopped = await env.rt.get_optimization(run_id)
    assert (stopped.status, stopped.resumable, stopped.version) == ("interrupted", True, None)
    assert stopped.error is not None
    assert stopped.error.startswith("CancelledError")
    # the baseline and the first two candidates were recorded before the cancellation
    assert [(t.number, t.detail.get("seed")) for t in stopped.trials] == [
        (0, None),
        (1, -3),
        (2, -2),
    ]
    assert all("candidate_spec" not in t.detail for t in stopped.trials)

    before = env.calls
    events: list[dspex.OptimizationEvent] = []
    done = await env.rt.optimize(resume=run_id, on_progress=events.append)
    resumed_calls = env.calls - before

    assert (done.status, done.attempts, done.optimization_id) == ("completed", 2, run_id)
    assert (done.baseline_score, done.score) == (whole.baseline_score, whole.score)
    modules = (await env.rt.load_program("qa", done.version)).to_dict()["modules"]
    assert modules == expected  # the same demos as the run nobody interrupted
    seeds = [t.detail.get("seed") for t in done.trials if t.detail.get("kind") == "candidate"]
    assert seeds == [-3, -2, -1, 0, 1]  # each candidate once
    # not run again: the baseline (8 calls) and the zero-shot and labelled candidates (8 each)
    assert resumed_calls == whole.stats["lm_calls"] - 24
    assert done.stats["lm_calls"] >= resumed_calls
    phases = [e.phase for e in events if e.phase != "calls"]  # "calls" come with time
    assert phases[:2] == ["started", "compiling"]
    assert [_candidate_seed(e) for e in events if e.phase == "candidate"] == [-1, 0, 1]
    assert events[-1].phase == "result"


async def test_a_resumed_bootstrap_few_shot_reuses_its_baseline_and_compiles_again(
    env: _Env, reference: _Env
) -> None:
    whole = await reference.rt.optimize("qa", ROWS, metric="exact_match", seed=5)
    run_id = await _interrupted(
        env.rt, lambda e: e.phase == "compiling", metric="exact_match", seed=5
    )
    assert [t.number for t in (await env.rt.get_optimization(run_id)).trials] == [0]
    before = env.calls
    done = await env.rt.optimize("qa", resume=run_id)
    assert done.status == "completed"
    assert (done.seed, done.settings) == (5, whole.settings)
    assert env.calls - before == whole.stats["lm_calls"] - 8  # all but the baseline
    assert [t.detail.get("kind") for t in done.trials] == ["baseline", "result"]
    spec = (await env.rt.load_program("qa", done.version)).to_dict()["modules"]
    assert spec == (await reference.rt.load_program("qa", whole.version)).to_dict()["modules"]


async def test_only_a_run_that_stopped_can_be_resumed_and_only_as_it_was_started(
    env: _Env,
) -> None:
    rt = env.rt
    finished = await rt.optimize("qa", ROWS, metric="exact_match")
    with pytest.raises(OptimizationError, match="already completed"):
        await rt.optimize(resume=finished.optimization_id)
    with pytest.raises(ValidationError) as given:
        await rt.optimize(resume=finished.optimization_id, trainset=ROWS, seed=1)
    assert {e.field for e in given.value.errors} == {"trainset", "seed"}
    with pytest.raises(NotFoundError):
        await rt.optimize(resume="no-such-run")
    with pytest.raises(ValidationError, match="program, the trainset and the metric"):
        await rt.optimize("qa", ROWS)

    new = NewOptimization(
        program="qa",
        program_version=1,
        optimizer="bootstrap_few_shot",
        metric="exact_match",
        trainset_hash="0" * 64,
        trainset_size=8,
        valset_size=8,
        worker_id="elsewhere:1",
        lease_seconds=60,
        request={"trainset": ROWS, "valset": None, "max_demos": 2, "optimize": {}},
    )
    live = await rt.store.create_optimization(new)
    with pytest.raises(OptimizationError, match="still running by elsewhere:1"):
        await rt.optimize(resume=live.id)
    with pytest.raises(ValidationError, match="optimizes 'qa', not 'other'"):
        await rt.optimize("other", resume=live.id)
    await rt.store.finish_optimization(live.id, status=OptimizationStatus.FAILED, error="x")
    unrecorded = await rt.store.create_optimization(dataclasses.replace(new, request=None))
    await rt.store.finish_optimization(unrecorded.id, status=OptimizationStatus.FAILED)
    with pytest.raises(OptimizationError, match="without its data sets"):
        await rt.optimize(resume=unrecorded.id)
    # the failed run with its request resumes with what it was started with
    resumed = await rt.optimize(resume=live.id)
    assert (resumed.status, resumed.attempts, resumed.worker_id) == (
        "completed",
        2,
        rt.worker_id,
    )


async def test_a_running_run_whose_lease_expired_is_shown_interrupted(env: _Env) -> None:
    record = await env.rt.store.create_optimization(
        NewOptimization(
            program="qa",
            program_version=1,
            optimizer="gepa",
            metric="f1",
            trainset_hash="0" * 64,
            trainset_size=1,
            valset_size=1,
            worker_id="host:42",
            lease_seconds=30,
        )
    )
    assert record.lease_expires_at is not None
    alive = optimization_info(record, record.lease_expires_at - timedelta(seconds=1))
    assert (alive.status, alive.resumable, alive.lease_expires_at) == (
        "running",
        False,
        record.lease_expires_at,
    )
    lost = optimization_info(record, record.lease_expires_at + timedelta(seconds=1))
    assert (lost.status, lost.resumable, lost.lease_expires_at) == ("interrupted", True, None)
    assert lost.error is not None
    assert lost.error.startswith("lease_expired: host:42 stopped renewing its lease")

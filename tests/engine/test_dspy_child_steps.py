"""Inside the opaque ``dspy`` module: each predictor call is recorded as a child step
``<module>.<predictor>`` with its duration, status and usage, and each LM call as one of its
attempts, on a plain backend as behind a coordinator group.

The LMs are real ``dspy`` backends talking HTTP to the loopback OpenAI server, which reports
usage (word counts), and the records go through a real store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dspy
import pytest
from engine_specs import program
from tests.engine.dspy_native_modules import REF
from tests.resilience.test_coordinator_dspy import SkippingClock
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind
from tests.support.openai_server import OpenAIServer, status

from dspex._critical_path import critical_path, is_child_step
from dspex.backends.dspy_backend import DspyBackend
from dspex.config import Settings
from dspex.engine.engine import Engine
from dspex.engine.history import median_durations, summarize
from dspex.engine.program import Program
from dspex.records import AttemptOutcome, ExecutionStatus, StepRecord, StepStatus
from dspex.resilience import Coordinator, RetryPolicy
from dspex.runtime import Runtime
from dspex.store.base import Store
from dspex.telemetry import Telemetry

HERE = "tests.engine.test_dspy_child_steps"
KEY_ENV = "DSPEX_TEST_CHILD_STEPS_KEY"
MODEL = "openai/loopback-model"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIServer]:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as running:
        yield running


class SideBySide(dspy.Module):
    """Two predictors run at once in ``dspy.Parallel``'s own threads."""

    def __init__(self) -> None:
        super().__init__()
        self.pro = dspy.Predict("question -> argument")
        self.con = dspy.Predict("question -> argument")

    def forward(self, question: str) -> Any:
        pro, con = dspy.Parallel(num_threads=2)(
            [(self.pro, {"question": question}), (self.con, {"question": question})]
        )
        return dspy.Prediction(answer=f"{pro.argument} / {con.argument}")


def _backend(name: str, server: OpenAIServer) -> DspyBackend:
    return DspyBackend(name, model=MODEL, api_base=server.base_url, api_key_env=KEY_ENV)


def _two_steps(**extra: Any) -> dict[str, Any]:
    return program(
        {
            "m": {
                "kind": "dspy",
                "module": f"{REF}:TwoSteps",
                "signature": "question: str -> answer: str",
                **extra,
            }
        },
        signature="question: str -> answer: str",
    )


@pytest.fixture(params=["sqlite", POSTGRES])
async def runtime(
    request: pytest.FixtureRequest, server: OpenAIServer
) -> AsyncIterator[tuple[Runtime, Store]]:
    async with (
        open_kind(request.param, request, FakeClock()) as store,
        Runtime(
            Settings(allowed_imports=(REF,)),
            store,
            backends={"default": _backend("default", server)},
            worker_id="worker-1",
            telemetry=Telemetry(spans=False),
        ) as rt,
    ):
        yield rt, store


async def test_each_predictor_call_is_a_child_step_with_its_duration_tokens_and_lm_attempts(
    runtime: tuple[Runtime, Store],
) -> None:
    rt, store = runtime
    info = await rt.register(_two_steps())
    info = await rt.initialize(info.name, info.version)
    assert info.status == "ready", info.error

    result = await rt.execute(info.name, {"question": "What is six times seven?"})
    assert result.status == "completed", result.error

    steps = await store.list_steps(result.execution_id)
    assert [s.module for s in steps] == ["m", "m.draft", "m.polish"]
    parent, draft, polish = steps
    for child in (draft, polish):
        assert child.status is StepStatus.COMPLETED
        assert child.duration_ms is not None
        assert child.duration_ms > 0
        assert child.started_at is not None
        assert child.ended_at is not None
        assert child.attempts == 1
        assert child.usage[MODEL]["prompt_tokens"] > 0
        assert child.usage[MODEL]["completion_tokens"] > 0
    # the module's own usage (a plain backend) is its predictors' together, counted once
    assert parent.usage[MODEL]["prompt_tokens"] == (
        draft.usage[MODEL]["prompt_tokens"] + polish.usage[MODEL]["prompt_tokens"]
    )
    assert result.usage == parent.usage

    detail = await rt.get_execution(result.execution_id)
    assert [s.module for s in detail.steps] == ["m", "m.draft", "m.polish"]
    assert detail.attempts == parent.attempts  # the program's module calls, not its LM calls
    lm_calls = {a.module: a for a in detail.attempt_records if a.module != "m"}
    assert set(lm_calls) == {"m.draft", "m.polish"}
    for name, child in (("m.draft", draft), ("m.polish", polish)):
        attempt = lm_calls[name]
        assert (attempt.backend, attempt.outcome) == ("default", AttemptOutcome.SUCCEEDED)
        assert attempt.prompt_tokens == child.usage[MODEL]["prompt_tokens"]
        assert attempt.completion_tokens == child.usage[MODEL]["completion_tokens"]


async def test_child_steps_stay_out_of_the_history_critical_path_and_bottlenecks(
    runtime: tuple[Runtime, Store],
) -> None:
    rt, _ = runtime
    info = await rt.register(_two_steps())
    await rt.initialize(info.name, info.version)
    for question in ("one", "two"):
        result = await rt.execute(info.name, {"question": question})
        assert result.status == "completed", result.error

    history = await rt.history(info.name)
    assert [m.module for m in history.modules] == ["m"]
    assert history.critical_path == ["m"]
    assert all(not is_child_step(b.module) for b in history.bottlenecks)


def test_the_graph_analyses_ignore_dotted_child_steps() -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)

    def step(module: str, start: int, end: int) -> StepRecord:
        return StepRecord(
            module=module,
            status=StepStatus.COMPLETED,
            started_at=base + timedelta(milliseconds=start),
            ended_at=base + timedelta(milliseconds=end),
            duration_ms=float(end - start),
            execution_id="e1",
        )

    # the child ends last and lasts longest: counted, it would be the whole critical path
    steps = [step("a", 0, 10), step("b", 10, 30), step("b.generate.predict", 12, 40)]
    deps = {"a": (), "b": ("a",)}
    assert critical_path([("a", 0, 10), ("b", 10, 30), ("b.x", 12, 40)], deps) == ("a", "b")
    assert summarize(steps, deps).critical_path == ("a", "b")
    assert [m.module for m in summarize(steps, deps).modules] == ["a", "b"]
    assert median_durations(steps) == {"a": 10.0, "b": 20.0}


async def test_a_chain_of_thought_is_named_as_named_predictors_gives_it(
    server: OpenAIServer,
) -> None:
    spec = program(
        {
            "rag": {
                "kind": "dspy",
                "module": f"{REF}:QA",
                "signature": "question: str -> answer: str",
            }
        },
        signature="question: str -> answer: str",
    )
    backend = _backend("default", server)
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"question": "Why?"})
    await backend.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    (child,) = result.step("rag").children
    assert child.name == "rag.answer.predict"
    assert child.status is StepStatus.COMPLETED
    assert child.kind == "predictor"
    assert [a.backend for a in child.attempt_details] == ["default"]
    assert child.attempts == 1
    assert child.usage[MODEL].prompt_tokens > 0


async def test_a_failed_lm_call_fails_its_child_step_with_a_failed_attempt(
    server: OpenAIServer,
) -> None:
    server.script(*[status(400)] * 4)  # DSPy's adapter may try again in another format
    backend = _backend("default", server)
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        result = await engine.run(Program.from_dict(_two_steps()), {"question": "Why?"})
    await backend.aclose()
    assert result.status is ExecutionStatus.FAILED
    (draft,) = result.step("m").children  # polish never ran
    assert draft.name == "m.draft"
    assert draft.status is StepStatus.FAILED
    assert draft.error_code == "backend_bad_request"
    assert draft.attempts == len(draft.attempt_details) > 0
    assert all(a.outcome is AttemptOutcome.FAILED for a in draft.attempt_details)
    assert {a.error_code for a in draft.attempt_details} == {"backend_bad_request"}


async def test_behind_a_coordinator_group_child_steps_carry_usage_and_the_group_the_attempts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-loopback")
    with OpenAIServer() as a, OpenAIServer() as b:
        a.script(status(401))
        members = [_backend("a", a), _backend("b", b)]
        policy = RetryPolicy(max_attempts=3, initial_interval=0.5, jitter=0.0)
        group = Coordinator("main", members, policy=policy, clock=SkippingClock())
        async with Engine(backends={"main": group}, allowed_imports=(REF,)) as engine:
            result = await engine.run(
                Program.from_dict(_two_steps(backend="main")), {"question": "Why?"}
            )
        await group.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    step = result.step("m")
    assert [c.name for c in step.children] == ["m.draft", "m.polish"]
    assert [x.outcome.value for x in step.attempt_details] == ["failed", "succeeded", "succeeded"]
    for child in step.children:
        assert child.attempt_details == ()  # the group's attempts are the module's
        assert child.backend is None
        assert child.usage["dspex/main"].prompt_tokens > 0


async def test_predictor_calls_in_dspy_parallel_threads_are_child_steps_too(
    server: OpenAIServer,
) -> None:
    spec = program(
        {
            "m": {
                "kind": "dspy",
                "module": f"{HERE}:SideBySide",
                "signature": "question: str -> answer: str",
            }
        },
        signature="question: str -> answer: str",
    )
    backend = _backend("default", server)
    async with Engine(backends={"default": backend}, allowed_imports=(HERE,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"question": "Tea or coffee?"})
    await backend.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    step = result.step("m")
    assert sorted(c.name for c in step.children) == ["m.con", "m.pro"]
    assert all(c.status is StepStatus.COMPLETED for c in step.children)
    assert all(c.attempts == len(c.attempt_details) == 1 for c in step.children)


async def test_a_run_result_dumps_each_modules_child_steps_timed_inside_it(
    server: OpenAIServer,
) -> None:
    backend = _backend("default", server)
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        result = await engine.run(Program.from_dict(_two_steps()), {"question": "Why?"})
    await backend.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    (step,) = result.to_dict()["steps"]
    assert [c["name"] for c in step["children"]] == ["m.draft", "m.polish"]
    draft, polish = step["children"]
    for child in (draft, polish):
        assert child["kind"] == "predictor"
        assert child["status"] == "completed"
        assert child["attempts"] == 1
        assert child["usage"][MODEL]["prompt_tokens"] > 0
        assert child["children"] == []
        # on the run's clock, like the module's own times
        assert step["started_ms"] <= child["started_ms"] <= child["ended_ms"] <= step["ended_ms"]
    assert draft["ended_ms"] <= polish["started_ms"]

"""Inside the opaque ``dspy`` module: each predictor call is recorded as a child step
``<module>.<predictor>`` with its duration, status and usage, and each LM call as one of its
attempts, on a plain backend as behind a coordinator group.

The LMs are real ``dspy`` backends talking HTTP to the loopback OpenAI server, which reports
usage (word counts), and the records go through a real store.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM
from engine_specs import program
from tests.engine.dspy_native_modules import REF
from tests.resilience.test_coordinator_dspy import SkippingClock
from tests.store._clock import FakeClock
from tests.store.conftest import POSTGRES, open_kind
from tests.support.openai_server import OpenAIServer, status

from dspex._critical_path import critical_path, is_child_step
from dspex.backends.dspy_backend import DspyBackend
from dspex.config import Settings
from dspex.engine import dspy_modules
from dspex.engine.dspy_modules import CallRecorder, ModulePool
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
            Settings(allowed_imports=(REF, HERE)),
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


async def test_predictor_calls_in_dspy_parallel_threads_are_child_steps_with_their_tokens(
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
    for child in step.children:
        assert child.status is StepStatus.COMPLETED
        (attempt,) = child.attempt_details
        # each worker thread counts on its own copy of the usage tracker, never merged back
        assert child.usage[MODEL].prompt_tokens > 0
        assert child.usage[MODEL].completion_tokens > 0
        assert attempt.usage == child.usage
    pro, con = sorted(step.children, key=lambda c: c.name, reverse=True)
    # the module's tokens are its two predictor calls', counted once
    assert step.usage == {MODEL: pro.usage[MODEL] + con.usage[MODEL]}
    assert result.usage == step.usage


class FannedOut(dspy.Module):
    """A predictor called in ``dspy.Parallel`` threads, and once more in the calling thread."""

    def __init__(self) -> None:
        super().__init__()
        self.side = dspy.Predict("question -> argument")
        self.judge = dspy.Predict("question, arguments -> answer")

    def forward(self, question: str) -> Any:
        found = dspy.Parallel(num_threads=3)(
            [(self.side, {"question": f"{question} ({n})"}) for n in range(3)]
        )
        return self.judge(question=question, arguments=[p.argument for p in found])


async def test_tokens_of_parallel_and_direct_predictor_calls_add_up_on_a_real_store(
    runtime: tuple[Runtime, Store],
) -> None:
    rt, store = runtime
    spec = program(
        {
            "m": {
                "kind": "dspy",
                "module": f"{HERE}:FannedOut",
                "signature": "question: str -> answer: str",
            }
        },
        signature="question: str -> answer: str",
    )
    info = await rt.register(spec)
    info = await rt.initialize(info.name, info.version)
    assert info.status == "ready", info.error
    result = await rt.execute(info.name, {"question": "Tea or coffee?"})
    assert result.status == "completed", result.error

    steps = await store.list_steps(result.execution_id)
    parent, *children = steps
    assert parent.module == "m"
    assert sorted(c.module for c in children) == ["m.judge", "m.side", "m.side", "m.side"]
    for child in children:
        assert child.usage[MODEL]["prompt_tokens"] > 0
        assert child.usage[MODEL]["completion_tokens"] > 0
    for kind in ("prompt_tokens", "completion_tokens"):
        assert parent.usage[MODEL][kind] == sum(c.usage[MODEL][kind] for c in children)
    detail = await rt.get_execution(result.execution_id)
    lm_calls = [a for a in detail.attempt_records if a.module != "m"]
    assert len(lm_calls) == 4
    assert sum(a.prompt_tokens for a in lm_calls) == parent.usage[MODEL]["prompt_tokens"]


class OwnTracking(dspy.Module):
    """Tracks usage itself around one predictor, and calls the LM once outside any."""

    def __init__(self) -> None:
        super().__init__()
        self.first = dspy.Predict("question -> draft")
        self.second = dspy.Predict("draft -> answer")

    def forward(self, question: str) -> Any:
        with dspy.track_usage():  # rolls its entries up into the caller's tracker at exit
            draft = self.first(question=question).draft
        dspy.settings.lm(f"Say more about: {question}")
        return self.second(draft=draft)


async def test_tokens_under_the_module_s_own_tracker_and_outside_predictors_count_once(
    server: OpenAIServer,
) -> None:
    spec = program(
        {"m": {"kind": "dspy", "module": f"{HERE}:OwnTracking", "signature": "question -> answer"}},
        signature="question -> answer",
    )
    backend = _backend("default", server)
    async with Engine(backends={"default": backend}, allowed_imports=(HERE,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"question": "Why is the sky blue?"})
    await backend.aclose()
    assert result.status is ExecutionStatus.COMPLETED, result.error
    step = result.step("m")
    first, second = step.children
    assert (first.name, second.name) == ("m.first", "m.second")
    for child in (first, second):
        (attempt,) = child.attempt_details
        assert attempt.usage == child.usage
        assert child.usage[MODEL].prompt_tokens > 0
    # the direct LM call is the module's own (no child step), the rolled-up entries count once
    outside = step.usage[MODEL].prompt_tokens - (
        first.usage[MODEL].prompt_tokens + second.usage[MODEL].prompt_tokens
    )
    assert 0 < outside < first.usage[MODEL].prompt_tokens
    assert server.request_count == 3


class CopyFails(dspy.LM):
    """An LM that cannot be copied: the module runs on it with the LM hook in the settings."""

    def copy(self, **kwargs: Any) -> Any:
        raise TypeError("this LM cannot be copied")


async def test_an_lm_that_cannot_be_copied_still_has_its_calls_recorded(
    server: OpenAIServer,
) -> None:
    lm = CopyFails(MODEL, api_base=server.base_url, api_key="sk-loopback", num_retries=0)
    backend = DspyBackend("default", lm=lm)
    async with Engine(backends={"default": backend}, allowed_imports=(REF,)) as engine:
        result = await engine.run(Program.from_dict(_two_steps()), {"question": "Why?"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    step = result.step("m")
    assert [c.name for c in step.children] == ["m.draft", "m.polish"]
    for child in step.children:
        (attempt,) = child.attempt_details
        assert attempt.backend == "default"
        assert attempt.usage == child.usage
        assert child.usage[MODEL].prompt_tokens > 0
    assert len(lm.history) == 2  # the module ran on the backend's LM itself


class CopiesItsPredictor(dspy.Module):
    """Calls a deep copy of its predictor, then the predictor."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> answer")

    def forward(self, question: str) -> Any:
        self.draft.deepcopy()(question=question)
        return self.draft(question=question)


def test_a_pooled_instance_reports_only_to_the_recorder_of_the_call_holding_it() -> None:
    lm = DummyLM([{"answer": a} for a in ("one", "two", "three", "four")])
    pool = ModulePool(CopiesItsPredictor())
    recorder = CallRecorder("m", None)
    with dspy.context(lm=lm):
        first = pool.call_sync({"question": "q"}, recorder)
        second = pool.call_sync({"question": "q"})  # the same instance, no recorder
    assert (first.answer, second.answer) == ("two", "four")
    # a copy made during the call (DSPy copies no callbacks) is not one of its predictors
    assert [c.name for c in recorder.children()] == ["m.draft"]


STARTED = threading.Event()
RELEASE = threading.Event()
LATE: list[threading.Thread] = []


class WaitingPredict(dspy.Predict):
    def forward(self, **kwargs: Any) -> Any:
        STARTED.set()
        RELEASE.wait(10)
        return super().forward(**kwargs)


class LeavesACallOpen(dspy.Module):
    """Fails while one of its predictors still runs in a thread of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.slow = WaitingPredict("question -> answer")

    def forward(self, question: str) -> Any:
        call = functools.partial(self.slow, question=question)
        thread = threading.Thread(target=contextvars.copy_context().run, args=(call,))
        LATE.append(thread)
        thread.start()
        STARTED.wait(10)
        raise RuntimeError("gave up waiting")


async def test_a_predictor_call_ending_after_its_module_failed_is_not_recorded() -> None:
    spec = program(
        {
            "m": {
                "kind": "dspy",
                "module": f"{HERE}:LeavesACallOpen",
                "signature": "question -> answer",
            }
        },
        signature="question -> answer",
    )
    backend = DspyBackend("default", lm=DummyLM([{"answer": "late"}]))
    async with Engine(backends={"default": backend}, allowed_imports=(HERE,)) as engine:
        result = await engine.run(Program.from_dict(spec), {"question": "?"})
    RELEASE.set()
    for thread in LATE:
        thread.join(10)
    assert result.status is ExecutionStatus.FAILED
    step = result.step("m")
    assert "gave up waiting" in (step.error_message or "")
    assert step.children == ()
    assert not dspy_modules._ACTIVE  # the open call was forgotten, nothing reported it late


class AsyncTwoSteps(dspy.Module):
    """``aforward``: its predictor calls run on the event loop, as ``acall``."""

    def __init__(self) -> None:
        super().__init__()
        self.draft = dspy.Predict("question -> draft")
        self.polish = dspy.Predict("draft -> answer")

    async def aforward(self, question: str) -> Any:
        draft = await self.draft.acall(question=question)
        return await self.polish.acall(draft=draft.draft)


@pytest.mark.parametrize("module", ["TwoSteps", "AsyncTwoSteps"])
async def test_concurrent_calls_on_one_lm_each_record_only_their_own_calls(
    server: OpenAIServer, module: str
) -> None:
    ref = f"{HERE}:AsyncTwoSteps" if module == "AsyncTwoSteps" else f"{REF}:TwoSteps"
    spec = program(
        {"m": {"kind": "dspy", "module": ref, "signature": "question: str -> answer: str"}},
        signature="question: str -> answer: str",
    )
    backend = _backend("default", server)
    async with Engine(backends={"default": backend}, allowed_imports=(REF, HERE)) as engine:
        prog = Program.from_dict(spec)
        questions = [f"question number {n} {'word ' * n}" for n in range(6)]
        results = await asyncio.gather(*(engine.run(prog, {"question": q}) for q in questions))
    await backend.aclose()
    for result in results:
        assert result.status is ExecutionStatus.COMPLETED, result.error
        step = result.step("m")
        assert [c.name for c in step.children] == ["m.draft", "m.polish"]
        for child in step.children:
            (attempt,) = child.attempt_details
            assert attempt.usage == child.usage
        prompt = sum(c.usage[MODEL].prompt_tokens for c in step.children)
        assert step.usage[MODEL].prompt_tokens == prompt
    # longer questions, more prompt tokens: each call counted its own LM calls
    drafts = [r.step("m").children[0].usage[MODEL].prompt_tokens for r in results]
    assert drafts == sorted(drafts)
    assert len(set(drafts)) == len(drafts)
    assert server.request_count == 12


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


async def test_a_dspy_modules_child_steps_and_lm_calls_are_recorded_with_it_while_the_run_goes_on(
    server: OpenAIServer, tmp_path: Any
) -> None:
    from dspex.backends.base import PredictRequest
    from dspex.backends.mock import MockBackend
    from dspex.records import ExecutionFilter
    from dspex.store.sql import SqlStore

    gate = asyncio.Event()

    async def held(request: PredictRequest) -> dict[str, Any]:
        await gate.wait()
        return {"final": request.inputs["answer"]}

    spec = program(
        {
            "m": {
                "kind": "dspy",
                "module": f"{REF}:TwoSteps",
                "signature": "question: str -> answer: str",
            },
            "check": {
                "kind": "predict",
                "signature": "answer: str -> final: str",
                "inputs": {"answer": "m.answer"},
                "backend": "gate",
            },
        },
        signature="question: str -> final: str",
    )
    backends = {"default": _backend("default", server), "gate": MockBackend("gate", handler=held)}
    async with (
        SqlStore(f"sqlite:///{tmp_path}/dspex.db", auto_upgrade=True) as store,
        Runtime(
            Settings(allowed_imports=(REF, HERE), live_steps_seconds=0),
            store,
            backends=backends,
            worker_id="worker-1",
            telemetry=Telemetry(spans=False),
        ) as rt,
    ):
        info = await rt.register(spec)
        info = await rt.initialize(info.name, info.version)
        assert info.status == "ready", info.error
        run = asyncio.create_task(rt.execute(info.name, {"question": "Six times seven?"}))
        seen: list[StepRecord] = []
        for _ in range(2000):  # until m (and its predictor calls) are recorded
            page = await store.list_executions(ExecutionFilter(program=info.name))
            seen = await store.list_steps(page.items[0].id) if page.items else []
            if seen:
                break
            await asyncio.sleep(0.005)
        execution_id = page.items[0].id
        assert [s.module for s in seen] == ["m", "m.draft", "m.polish"]
        assert (await store.get_execution(execution_id)).status is ExecutionStatus.RUNNING
        early = await store.list_attempts(execution_id)
        assert {a.module for a in early} >= {"m.draft", "m.polish"}
        gate.set()
        result = await run
        assert result.status == "completed", result.error
        steps = await store.list_steps(execution_id)
        attempts = await store.list_attempts(execution_id)
    assert [s.module for s in steps] == ["m", "m.draft", "m.polish", "check"]
    assert [s.id for s in steps[:3]] == [s.id for s in seen]
    assert attempts[: len(early)] == early
    assert [a.module for a in attempts[len(early) :]] == ["check"]

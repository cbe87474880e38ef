"""Running graphs: strategies, failure tolerance, cancellation, timeouts, retries and hooks.

Module latencies are mock-backend sleeps under looptime, so every timing below is exact and free.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from typing import Any

import pytest
from engine_specs import predict, program

from dspex.backends.base import PredictRequest
from dspex.backends.mock import MockBackend
from dspex.engine.engine import Engine
from dspex.engine.program import Program
from dspex.engine.resources import ResourceManager
from dspex.errors import BackendUnavailableError, BadRequestError, RateLimitError
from dspex.hooks import BaseHooks
from dspex.records import ExecutionStatus, StepStatus

pytestmark = pytest.mark.looptime


def slow(signature: str, ms: float, **fields: Any) -> dict[str, Any]:
    return predict(signature, config={"mock_latency_ms": ms}, **fields)


# a(100) and b(300) are independent; c needs a; d needs b and c.
DIAMOND = program(
    {
        "a": slow("q: str -> a1: str", 100),
        "b": slow("q: str -> b1: str", 300),
        "c": slow("a1: str -> c1: str", 100, inputs={"a1": "a.a1"}),
        "d": slow("b1: str, c1: str -> y: str", 100, inputs={"b1": "b.b1", "c1": "c.c1"}),
    }
)


def starts(result: Any) -> dict[str, float | None]:
    return {s.name: s.started_ms for s in result.steps}


async def run(spec: dict[str, Any], backend: MockBackend | None = None, **kw: Any) -> Any:
    engine = Engine(backends={"default": backend or MockBackend()}, **kw.pop("engine", {}))
    return await engine.run(Program.from_dict(spec), {"q": "hello"}, **kw)


async def test_sequential_runs_one_module_at_a_time_in_plan_order() -> None:
    result = await run(DIAMOND, strategy="sequential")
    assert result.status is ExecutionStatus.COMPLETED
    assert starts(result) == {"a": 0.0, "b": 100.0, "c": 400.0, "d": 500.0}
    assert result.duration_ms == 600.0


async def test_parallel_waits_for_the_whole_level_before_the_next() -> None:
    result = await run(DIAMOND, strategy="parallel")
    # c is ready at 100 but level 1 starts only when b (level 0) ends at 300
    assert starts(result) == {"a": 0.0, "b": 0.0, "c": 300.0, "d": 400.0}
    assert result.duration_ms == 500.0


async def test_optimized_starts_each_module_when_its_own_dependencies_finish() -> None:
    result = await run(DIAMOND)
    assert result.strategy == "optimized"
    assert starts(result) == {"a": 0.0, "b": 0.0, "c": 100.0, "d": 300.0}
    assert result.duration_ms == 400.0


async def test_outputs_are_validated_and_steps_report_timings_and_usage() -> None:
    result = await run(DIAMOND)
    assert isinstance(result.outputs["y"], str)
    d = result.step("d")
    assert (d.started_ms, d.ended_ms, d.duration_ms, d.attempts) == (300.0, 400.0, 100.0, 1)
    assert result.total_usage.total_tokens > 0
    assert [s.name for s in result.steps] == list(Program.from_dict(DIAMOND).plan().order)


async def test_resource_aware_admits_no_more_than_capacity() -> None:
    modules = {f"m{i}": slow("q: str -> o: str", 100, resources={"lm_slots": 1}) for i in range(4)}
    modules["last"] = slow("q: str -> y: str", 0, after=list(modules))
    engine_kw = {"resources": {"lm_slots": 2}}
    result = await run(
        program(modules, outputs={"y": "last.y"}), strategy="resource_aware", engine=engine_kw
    )
    assert sorted(starts(result)[f"m{i}"] for i in range(4)) == [0.0, 0.0, 100.0, 100.0]
    assert max(s.wait_ms for s in result.steps) == 100.0


async def test_resource_needs_above_capacity_are_rejected_before_running() -> None:
    spec = program({"a": slow("q: str -> y: str", 0, resources={"lm_slots": 5})})
    backend = MockBackend()
    from dspex.errors import GraphError

    with pytest.raises(GraphError) as info:
        await run(spec, backend, strategy="resource_aware", engine={"resources": {"lm_slots": 2}})
    assert [(e.field, e.code) for e in info.value.errors] == [
        ("modules.a.resources.lm_slots", "exceeds_capacity")
    ]
    assert backend.calls == 0


def failing(*names: str, retryable: bool = False) -> MockBackend:
    async def handler(request: PredictRequest) -> dict[str, Any]:
        if request.module in names:
            if retryable:
                raise BackendUnavailableError("down", status=503)
            raise BadRequestError("bad", status=400)
        return {f.name: f"{request.module}-{f.name}" for f in request.signature.output_fields}

    return MockBackend(handler=handler)


# x fails at 50; s (slow sibling, 500) runs meanwhile; dx depends on x; t is independent after s
TOLERANCE = {
    "x": slow("q: str -> x1: str", 50),
    "s": slow("q: str -> s1: str", 500),
    "dx": slow("x1: str -> d1: str", 10, inputs={"x1": "x.x1"}),
    "t": slow("s1: str -> y: str", 10, inputs={"s1": "s.s1"}),
}


def statuses(result: Any) -> dict[str, StepStatus]:
    return {s.name: s.status for s in result.steps}


async def test_strict_failure_cancels_running_siblings_and_fails_the_run() -> None:
    manager_kw = {"resources": {"lm_slots": 4}}
    spec = program({**TOLERANCE, "s": slow("q: str -> s1: str", 500, resources={"lm_slots": 3})})
    engine = Engine(backends={"default": failing("x")}, **manager_kw)
    result = await engine.run(Program.from_dict(spec), {"q": "hi"}, strategy="resource_aware")
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert (result.error.code, result.error.module) == ("backend_bad_request", "x")
    assert statuses(result) == {
        "x": StepStatus.FAILED,
        "s": StepStatus.CANCELLED,
        "dx": StepStatus.SKIPPED,
        "t": StepStatus.CANCELLED,
    }
    assert result.duration_ms == 50.0
    assert result.step("s").ended_ms == 50.0
    assert engine.resources.in_use() == {"lm_slots": 0.0}
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_tolerant_failure_skips_only_dependents() -> None:
    spec = program(TOLERANCE, failure_tolerance="tolerant")
    result = await run(spec, failing("x"))
    assert result.status is ExecutionStatus.COMPLETED
    assert statuses(result) == {
        "x": StepStatus.FAILED,
        "s": StepStatus.COMPLETED,
        "dx": StepStatus.SKIPPED,
        "t": StepStatus.COMPLETED,
    }
    assert result.step("dx").error_message == "skipped: dependency 'x' failed"
    assert result.outputs == {"y": "t-y"}


async def test_tolerant_run_fails_when_a_program_output_was_not_produced() -> None:
    spec = program(TOLERANCE, failure_tolerance="tolerant", outputs={"y": "dx.d1"})
    result = await run(spec, failing("x"))
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert result.error.module == "x"


async def test_threshold_tolerates_up_to_n_failures() -> None:
    spec = program(TOLERANCE, failure_tolerance={"threshold": 1})
    result = await run(spec, failing("x"))
    assert result.status is ExecutionStatus.COMPLETED
    assert statuses(result)["t"] is StepStatus.COMPLETED


async def test_threshold_aborts_after_more_than_n_failures() -> None:
    spec = program(
        {**TOLERANCE, "x2": slow("q: str -> x3: str", 60)}, failure_tolerance="threshold: 1"
    )
    result = await run(spec, failing("x", "x2"))
    assert result.status is ExecutionStatus.FAILED
    assert statuses(result)["s"] is StepStatus.CANCELLED
    assert result.duration_ms == 60.0


async def test_module_timeout_fails_the_module_with_a_timeout_code() -> None:
    spec = program({"a": slow("q: str -> y: str", 5000, timeout=1.5)})
    result = await run(spec)
    step = result.step("a")
    assert (step.status, step.error_code, step.ended_ms) == (StepStatus.FAILED, "timeout", 1500.0)


async def test_retryable_errors_are_retried_with_backoff() -> None:
    calls: list[float] = []

    async def handler(request: PredictRequest) -> dict[str, Any]:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise RateLimitError("slow down", status=429, retry_after=2.0)
        return {"y": "ok"}

    retry = {"max_attempts": 3, "initial_interval": 0.5, "jitter": 0.0}
    spec = program({"a": predict("q: str -> y: str", retry=retry)})
    result = await run(spec, MockBackend(handler=handler))
    assert result.outputs == {"y": "ok"}
    assert result.step("a").attempts == 3
    assert calls == [0.0, 2.0, 4.0]  # Retry-After (2s) wins over the 0.5s/1s backoff


async def test_backoff_grows_and_jitter_stays_within_its_share() -> None:
    calls: list[float] = []

    async def handler(request: PredictRequest) -> dict[str, Any]:
        calls.append(asyncio.get_running_loop().time())
        raise BackendUnavailableError("down", status=503)

    retry = {"max_attempts": 4, "initial_interval": 1.0, "backoff_factor": 2.0, "jitter": 0.5}
    spec = program({"a": predict("q: str -> y: str", retry=retry)})
    result = await run(spec, MockBackend(handler=handler), engine={"seed": 1})
    waits = [b - a for a, b in itertools.pairwise(calls)]
    # jitter takes up to half of each wait away, never adds to it
    assert [0.5 <= waits[0] <= 1.0, 1.0 <= waits[1] <= 2.0, 2.0 <= waits[2] <= 4.0] == [True] * 3
    assert result.step("a").attempts == 4
    assert result.step("a").error_code == "backend_unavailable"


async def test_a_jittered_module_wait_never_exceeds_max_interval() -> None:
    calls: list[float] = []

    async def handler(request: PredictRequest) -> dict[str, Any]:
        calls.append(asyncio.get_running_loop().time())
        raise BackendUnavailableError("down", status=503)

    retry = {"max_attempts": 6, "initial_interval": 2.0, "max_interval": 2.0, "jitter": 0.3}
    spec = program({"a": predict("q: str -> y: str", retry=retry)})
    await run(spec, MockBackend(handler=handler), engine={"seed": 3})
    waits = [b - a for a, b in itertools.pairwise(calls)]
    assert len(waits) == 5
    assert all(1.4 <= wait <= 2.0 for wait in waits)


async def test_a_module_honours_retry_after_no_longer_than_max_retry_after() -> None:
    calls: list[float] = []

    async def handler(request: PredictRequest) -> dict[str, Any]:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise RateLimitError("come back tomorrow", status=429, retry_after=86400.0)
        return {"y": "ok"}

    spec = program({"a": predict("q: str -> y: str", retry={"max_attempts": 2, "jitter": 0.0})})
    result = await run(spec, MockBackend(handler=handler))
    assert result.outputs == {"y": "ok"}
    assert calls == [0.0, 60.0]  # the policy's max_retry_after (60 s by default), not a day


async def test_non_retryable_errors_are_not_retried() -> None:
    backend = failing("a")
    spec = program({"a": predict("q: str -> y: str", retry=5)})
    result = await run(spec, backend)
    assert (result.step("a").attempts, backend.calls) == (1, 1)


async def test_retry_deadline_stops_retrying() -> None:
    backend = failing("a", retryable=True)
    retry = {"max_attempts": 10, "initial_interval": 1.0, "jitter": 0.0, "deadline": 2.5}
    result = await run(program({"a": predict("q: str -> y: str", retry=retry)}), backend)
    assert result.step("a").attempts == 2  # 0s, 1s; the next wait (2s) would end past 2.5s
    assert result.duration_ms == 1000.0


async def test_module_outputs_are_validated_against_the_module_signature() -> None:
    async def handler(request: PredictRequest) -> dict[str, Any]:
        return {"n": "not a number"}

    spec = program({"a": predict("q: str -> n: int"), "b": predict("q: str -> y: str")})
    spec["failure_tolerance"] = "tolerant"
    result = await run(spec, MockBackend(handler=handler))
    assert result.step("a").error_code == "validation_error"


async def test_program_outputs_enforce_constraints() -> None:
    spec = program({"a": predict("q: str -> y: str")})
    spec["signature"] = {"signature": "q: str -> y: str", "constraints": {"y": {"max_length": 2}}}
    result = await run(spec, MockBackend(handler=lambda r: {"y": "too long"}))
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert result.error.code == "validation_error"


async def test_invalid_program_inputs_raise_before_anything_runs() -> None:
    from dspex.errors import ValidationError

    backend = MockBackend()
    engine = Engine(backends={"default": backend})
    with pytest.raises(ValidationError):
        await engine.run(Program.from_dict(program({"a": predict("q: str -> y: str")})), {})
    assert backend.calls == 0


class Recorder(BaseHooks):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def before_run(self, *, run_id: str, program: Any, inputs: Any, strategy: str) -> None:
        self.events.append(("before_run", strategy))

    def before_step(self, *, run_id: str, module: str, kind: str, inputs: Any) -> None:
        self.events.append(("before_step", module))

    async def after_step(self, *, run_id: str, step: Any) -> None:
        self.events.append(("after_step", f"{step.name}:{step.status.value}"))

    def after_run(self, *, run_id: str, result: Any) -> None:
        self.events.append(("after_run", result.status.value))


async def test_hooks_are_called_in_lifecycle_order() -> None:
    hook = Recorder()
    await run(DIAMOND, strategy="sequential", hooks=[hook])
    assert hook.events == [
        ("before_run", "sequential"),
        ("before_step", "a"),
        ("after_step", "a:completed"),
        ("before_step", "b"),
        ("after_step", "b:completed"),
        ("before_step", "c"),
        ("after_step", "c:completed"),
        ("before_step", "d"),
        ("after_step", "d:completed"),
        ("after_run", "completed"),
    ]


async def test_outside_cancellation_cancels_modules_and_reports_a_cancelled_run() -> None:
    hook = Recorder()
    engine = Engine(backends={"default": MockBackend()}, resources={"lm_slots": 1})
    spec = program({"a": slow("q: str -> y: str", 1000, resources={"lm_slots": 1})})
    task = asyncio.create_task(
        engine.run(Program.from_dict(spec), {"q": "x"}, strategy="resource_aware", hooks=[hook])
    )
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hook.events[-2:] == [("after_step", "a:cancelled"), ("after_run", "cancelled")]
    assert engine.resources.in_use() == {"lm_slots": 0.0}


# a and c need one slot, b needs both; all take 100 ms and queue in the order a, b, c.
MIXED_NEEDS = program(
    {
        "a": slow("q: str -> a1: str", 100, resources={"lm_slots": 1}),
        "b": slow("q: str -> b1: str", 100, resources={"lm_slots": 2}),
        "c": slow("q: str -> y: str", 100, resources={"lm_slots": 1}),
    }
)


async def test_engine_lets_a_small_module_pass_a_waiting_large_one_by_default() -> None:
    result = await run(
        MIXED_NEEDS, strategy="resource_aware", engine={"resources": {"lm_slots": 2}}
    )
    # c fills the slot b cannot use yet instead of idling behind it
    assert starts(result) == {"a": 0.0, "b": 100.0, "c": 0.0}
    assert result.duration_ms == 200.0


async def test_resource_bypass_zero_admits_modules_in_strict_order() -> None:
    engine = {"resources": {"lm_slots": 2}, "resource_bypass": 0}
    result = await run(MIXED_NEEDS, strategy="resource_aware", engine=engine)
    assert starts(result) == {"a": 0.0, "b": 100.0, "c": 200.0}


def test_a_resource_manager_given_to_the_engine_keeps_its_own_bypass_bound() -> None:
    assert Engine(resources={"lm_slots": 2}).resources.max_bypass == 4
    assert Engine(resources=ResourceManager({"lm_slots": 2})).resources.max_bypass == 0


async def test_a_module_cancelled_before_it_ever_ran_still_ends_the_run() -> None:
    class SlowToStart(BaseHooks):
        async def before_step(self, *, run_id: str, module: str, kind: str, inputs: Any) -> None:
            if module == "c":
                await asyncio.sleep(0.005)  # f fails meanwhile; c starts just before the abort

    spec = program(
        {
            "s": slow("q: str -> s1: str", 10),
            "f": slow("q: str -> f1: str", 12),
            "c": slow("s1: str -> y: str", 10, inputs={"s1": "s.s1"}),
        }
    )
    result = await run(spec, backend=failing("f"), hooks=[SlowToStart()])
    assert result.status is ExecutionStatus.FAILED
    c = result.step("c")
    assert (c.status, c.started_ms) == (StepStatus.CANCELLED, None)
    assert result.duration_ms == 15.0


async def test_a_before_step_hook_failing_cancels_the_module_started_just_before() -> None:
    hook = Recorder()

    class Boom(BaseHooks):
        def before_step(self, *, run_id: str, module: str, kind: str, inputs: Any) -> None:
            if module == "b":  # a was started just before, in the same batch
                raise RuntimeError("no b today")

    with pytest.raises(RuntimeError, match="no b today"):
        await run(DIAMOND, hooks=[hook, Boom()])
    assert ("before_step", "a") in hook.events
    assert not any(event == "after_step" for event, _ in hook.events)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_second_cancellation_still_waits_for_modules_to_finish_cleaning_up() -> None:
    cleaned: list[float] = []

    async def stubborn(request: PredictRequest) -> dict[str, Any]:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # cleanup that takes a while
            cleaned.append(asyncio.get_running_loop().time())
            raise
        return {}

    spec = program({"a": predict("q: str -> a1: str"), "b": predict("q: str -> y: str")})
    task = asyncio.create_task(run(spec, backend=MockBackend(handler=stubborn)))
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.sleep(0.1)  # the run is now waiting for its modules to clean up
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [1.1, 1.1]  # a and b both finished cleaning up before the run ended
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_a_failing_hook_aborts_the_run_and_propagates() -> None:
    class Boom(BaseHooks):
        def after_step(self, *, run_id: str, step: Any) -> None:
            raise RuntimeError("store is down")

    with pytest.raises(RuntimeError, match="store is down"):
        await run(DIAMOND, hooks=[Boom()])
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


# -- one-module programs: the same results and hooks, the module run in the run's own task


async def test_one_module_hooks_are_called_in_lifecycle_order() -> None:
    hook = Recorder()
    result = await run(program({"a": slow("q: str -> y: str", 50)}), hooks=[hook])
    assert result.status is ExecutionStatus.COMPLETED
    assert hook.events == [
        ("before_run", "optimized"),
        ("before_step", "a"),
        ("after_step", "a:completed"),
        ("after_run", "completed"),
    ]
    (step,) = result.steps
    assert (step.started_ms, step.ended_ms, step.duration_ms) == (0.0, 50.0, 50.0)
    assert result.usage == step.usage
    assert step.usage


@pytest.mark.parametrize("tolerance", ["strict", "tolerant", "threshold:1"])
async def test_a_failing_single_module_fails_the_run_with_its_error(tolerance: str) -> None:
    spec = program({"a": predict("q: str -> y: str")}, failure_tolerance=tolerance)
    result = await run(spec, MockBackend(permanent_failure_rate=1.0))
    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert (result.error.code, result.error.module) == ("backend_bad_request", "a")
    assert [s.status for s in result.steps] == [StepStatus.FAILED]


async def test_a_single_module_with_its_own_signature_validates_its_inputs_and_outputs() -> None:
    # the module reads the program input under another name and answers a constrained field
    spec = program(
        {"a": predict("text: str -> y: str", inputs={"text": "$input.q"})},
        signature="q: str -> y: str",
    )
    result = await run(spec)
    assert result.status is ExecutionStatus.COMPLETED
    assert isinstance(result.outputs["y"], str)


# -- one runner: modules that run alone need no task; side by side ones run in a task group


async def test_modules_that_run_alone_run_in_the_callers_task_and_others_in_their_own() -> None:
    tasks: dict[str, asyncio.Task[Any] | None] = {}

    async def handler(request: PredictRequest) -> dict[str, Any]:
        tasks[request.module] = asyncio.current_task()
        return {f.name: "v" for f in request.signature.output_fields}

    await run(DIAMOND, MockBackend(handler=handler), strategy="sequential")
    assert set(tasks.values()) == {asyncio.current_task()}
    tasks.clear()
    await run(DIAMOND, MockBackend(handler=handler))
    # a, b and c run side by side (c starts when a ends, b still runs), each in a task; d then
    # runs alone, in the run's task
    assert len({tasks["a"], tasks["b"], tasks["c"], asyncio.current_task()}) == 4
    assert tasks["d"] is asyncio.current_task()


def cancels_itself(*names: str) -> MockBackend:
    async def handler(request: PredictRequest) -> dict[str, Any]:
        if request.module in names:
            raise asyncio.CancelledError  # not a cancellation of the run: the module's own
        return {f.name: f"{request.module}-{f.name}" for f in request.signature.output_fields}

    return MockBackend(handler=handler)


@pytest.mark.parametrize("strategy", ["sequential", "optimized"])
async def test_a_module_that_cancels_itself_skips_its_dependents_instead_of_stalling(
    strategy: str,
) -> None:
    result = await run(DIAMOND, cancels_itself("a"), strategy=strategy)
    assert statuses(result) == {
        "a": StepStatus.CANCELLED,
        "b": StepStatus.COMPLETED,
        "c": StepStatus.SKIPPED,
        "d": StepStatus.SKIPPED,
    }
    assert result.step("c").error_message == "skipped: dependency 'a' was cancelled"
    assert result.step("d").error_message == "skipped: dependency 'a' was cancelled"
    assert result.status is ExecutionStatus.FAILED  # the program's output was never produced


async def test_after_step_reports_a_strict_failure_before_the_siblings_it_cancelled() -> None:
    hook = Recorder()
    await run(program(TOLERANCE), failing("x"), hooks=[hook])
    # t never started (it waited for s), so it has no step hooks
    assert hook.events == [
        ("before_run", "optimized"),
        ("before_step", "x"),
        ("before_step", "s"),
        ("after_step", "x:failed"),
        ("after_step", "s:cancelled"),
        ("after_run", "failed"),
    ]


async def test_a_cancellation_during_a_strict_abort_still_cancels_the_run() -> None:
    hook = Recorder()

    async def handler(request: PredictRequest) -> dict[str, Any]:
        if request.module == "x":
            await asyncio.sleep(0.05)
            raise BadRequestError("bad", status=400)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # s takes a second to clean up after the abort
            raise
        return {"s1": "s"}

    spec = program(
        {
            "x": predict("q: str -> x1: str"),
            "s": predict("q: str -> s1: str"),
            "t": predict("s1: str -> y: str", inputs={"s1": "s.s1"}),
        }
    )
    task = asyncio.create_task(run(spec, MockBackend(handler=handler), hooks=[hook]))
    await asyncio.sleep(0.5)  # x failed at 0.05; the run waits for s to clean up
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hook.events[-1] == ("after_run", "cancelled")
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_recorded_durations_reorder_their_run_and_not_the_next() -> None:
    # a and b are independent and share one slot: the one with the longer remaining path goes
    # first; planned estimates are equal, so plan order decides (a)
    spec = program(
        {
            "a": slow("q: str -> a1: str", 10, resources={"lm_slots": 1}),
            "b": slow("q: str -> b1: str", 10, resources={"lm_slots": 1}),
            "y": slow("a1: str, b1: str -> y: str", 0, inputs={"a1": "a.a1", "b1": "b.b1"}),
        }
    )
    engine = Engine(backends={"default": MockBackend()}, resources={"lm_slots": 1})
    prog = Program.from_dict(spec)

    async def first(durations: dict[str, float] | None) -> str:
        result = await engine.run(prog, {"q": "x"}, strategy="resource_aware", durations=durations)
        return min(("a", "b"), key=lambda name: result.step(name).started_ms or 0.0)

    assert await first(None) == "a"
    assert await first({"a": 1.0, "b": 1000.0}) == "b"
    assert await first(None) == "a"


async def test_an_engine_does_not_keep_a_program_it_ran_alive() -> None:
    engine = Engine(backends={"default": MockBackend()})
    prog = Program.from_dict(DIAMOND)
    await engine.prepare(prog)
    result = await engine.run(prog, {"q": "x"})
    assert result.status is ExecutionStatus.COMPLETED
    graph = weakref.ref(prog.graph)
    del prog, result
    gc.collect()
    assert graph() is None
    # and a new program equal to the old one is checked and runs as the first did
    assert (await engine.run(Program.from_dict(DIAMOND), {"q": "x"})).ok

"""The ``dspy`` kind runs DSPy programs as users write them: ``forward`` in a thread with DSPy's
context, constructor ``init``, a ``.save()`` state, one instance per concurrent call.

The modules are in ``tests.engine.dspy_native_modules``, allow-listed by its import path; the
LM is DSPy's ``DummyLM`` behind a real ``DspyBackend``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import dspy
import pytest
from dspy.utils import DummyLM
from dspy.utils.callback import BaseCallback
from engine_specs import program
from tests.engine import dspy_native_modules as modules
from tests.engine.dspy_native_modules import REF, bootstrapped_qa

from dspex.backends.dspy_backend import DspyBackend
from dspex.backends.mock import MockBackend
from dspex.engine.dspy_modules import ModulePool
from dspex.engine.engine import Engine
from dspex.engine.kinds import KindRunner, ThreadRunner
from dspex.engine.program import Program
from dspex.errors import GraphError, ModuleError, PathNotAllowedError, SecurityError, SpecError
from dspex.records import ExecutionStatus

QA_SIG = "question: str -> answer: str"


def dspy_spec(cls: str, signature: str = QA_SIG, **fields: Any) -> dict[str, Any]:
    """A one-module program around ``REF:cls``."""
    module = {"kind": "dspy", "module": f"{REF}:{cls}", "signature": signature, **fields}
    return program({"m": module}, signature=signature)


def engine_on(lm: Any = None, **kwargs: Any) -> Engine:
    backend = DspyBackend("default", lm=lm) if lm is not None else MockBackend()
    return Engine(backends={"default": backend}, allowed_imports=(REF,), **kwargs)


# ------------------------------------------------------------------------------ forward, init


async def test_a_module_that_defines_only_forward_runs_on_the_backends_lm() -> None:
    lm = DummyLM([{"reasoning": "it is", "answer": "Paris"}])
    async with engine_on(lm) as engine:
        result = await engine.run(
            Program.from_dict(dspy_spec("CallsLM")), {"question": "Capital of France?"}
        )
    assert result.status is ExecutionStatus.COMPLETED, result.error
    assert result.outputs == {"answer": "Paris"}


async def test_constructor_arguments_come_from_init() -> None:
    spec = dspy_spec("Echo", init={"suffix": "!"})
    async with engine_on() as engine:
        result = await engine.run(Program.from_dict(spec), {"question": "hi"})
    assert result.outputs == {"answer": "hi! k=3"}


async def test_an_optional_input_left_out_lets_the_modules_default_apply() -> None:
    signature = "question: str, k: optional[int] -> answer: str"
    spec = dspy_spec("Echo", signature, init={"suffix": ""})
    async with engine_on() as engine:
        left_out = await engine.run(Program.from_dict(spec), {"question": "q"})
        given = await engine.run(Program.from_dict(spec), {"question": "q", "k": 7})
    assert (left_out.outputs, given.outputs) == ({"answer": "q k=3"}, {"answer": "q k=7"})


async def test_init_that_does_not_fit_the_constructor_fails_preparation() -> None:
    spec = dspy_spec("Echo", init={"sufix": "!"})
    async with engine_on() as engine:
        with pytest.raises(ModuleError, match=r"cannot instantiate .*Echo: TypeError"):
            await engine.prepare(Program.from_dict(spec))


async def test_a_subclass_overriding_only_forward_runs_its_forward_not_the_inherited_aforward() -> (
    None
):
    async with engine_on() as engine:
        result = await engine.run(Program.from_dict(dspy_spec("ShoutingCoT")), {"question": "hi"})
    assert result.outputs == {"answer": "HI"}


async def test_dspy_settings_around_a_run_reach_the_forward_in_its_thread() -> None:
    seen: list[str] = []

    class Spy(BaseCallback):
        def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            seen.append(type(instance).__name__)

    lm = DummyLM([{"reasoning": "r", "answer": "yes"}])
    async with engine_on(lm) as engine:
        with dspy.context(callbacks=[Spy()]):
            result = await engine.run(Program.from_dict(dspy_spec("CallsLM")), {"question": "q"})
    assert result.status is ExecutionStatus.COMPLETED, result.error
    # the module itself, its ChainOfThought and the Predict inside: all ran in the worker thread
    assert seen[:3] == ["CallsLM", "ChainOfThought", "Predict"]


# ------------------------------------------------------------------------------ concurrency


async def test_overlapping_forward_calls_never_share_an_instance() -> None:
    spec = Program.from_dict(dspy_spec("ThreadLocalNotes"))
    async with engine_on() as engine:
        first, second = await asyncio.gather(
            engine.run(spec, {"question": "first"}), engine.run(spec, {"question": "second"})
        )
    assert (first.outputs, second.outputs) == ({"answer": "first"}, {"answer": "second"})


async def test_overlapping_aforward_calls_never_share_an_instance() -> None:
    modules.ASYNC_MEETING.reset(2)
    spec = Program.from_dict(dspy_spec("AsyncNotes"))
    async with engine_on() as engine:
        first, second = await asyncio.gather(
            engine.run(spec, {"question": "first"}), engine.run(spec, {"question": "second"})
        )
    assert (first.outputs, second.outputs) == ({"answer": "first"}, {"answer": "second"})


async def test_a_module_is_built_once_per_engine_and_reused_by_later_calls() -> None:
    spec = Program.from_dict(dspy_spec("Echo", init={"suffix": "."}))
    built: list[object] = []
    original = modules.Echo.__init__

    def counting(self: Any, suffix: str) -> None:
        built.append(self)
        original(self, suffix)

    modules.Echo.__init__ = counting  # type: ignore[method-assign]
    try:
        async with engine_on() as engine:
            for question in ("a", "b", "c"):
                await engine.run(spec, {"question": question})
    finally:
        modules.Echo.__init__ = original  # type: ignore[method-assign]
    # one construction; copies are made by DSPy's deepcopy, which does not call __init__
    assert len(built) == 1


# ------------------------------------------------------------------------------ state


async def test_a_state_saved_by_dspy_is_loaded_and_its_demos_reach_the_lm(tmp_path: Path) -> None:
    bootstrapped_qa().save(str(tmp_path / "qa.json"))
    (tmp_path / "qa.yaml").write_text(
        json.dumps(dspy_spec("QA", init={"prefix": "Q: "}, state="qa.json"))
    )
    lm = DummyLM([{"reasoning": "r", "answer": "Paris"}])
    async with engine_on(lm) as engine:
        result = await engine.run(Program.from_file(tmp_path / "qa.yaml"), {"question": "where?"})
    assert result.outputs == {"answer": "Paris"}
    prompt = json.dumps(lm.history[-1]["messages"])
    assert "train question 0" in prompt
    assert "because 1" in prompt
    assert "Q: where?" in prompt  # init reached the constructor


async def test_an_inline_state_mapping_works_like_the_file() -> None:
    state = bootstrapped_qa().dump_state()
    lm = DummyLM([{"reasoning": "r", "answer": "Paris"}])
    spec = dspy_spec("QA", init={"prefix": "Q: "}, state=state)
    async with engine_on(lm) as engine:
        await engine.run(Program.from_dict(spec), {"question": "where?"})
    assert "train question 1" in json.dumps(lm.history[-1]["messages"])


async def test_a_state_that_does_not_fit_the_module_names_the_missing_predictor() -> None:
    # saved from QA(reasoning=True): its predictor is answer.predict, not answer
    state = bootstrapped_qa().dump_state()
    spec = dspy_spec("QA", init={"reasoning": False}, state=state)
    async with engine_on() as engine:
        with pytest.raises(ModuleError, match=r"no entry for \['answer'\].*answer\.predict"):
            await engine.prepare(Program.from_dict(spec))


async def test_an_lm_saved_in_a_state_is_not_restored(tmp_path: Path) -> None:
    module = bootstrapped_qa()
    module.answer.predict.lm = dspy.LM("openai/never-called", api_key="unused")
    state = module.dump_state()
    assert state["answer.predict"]["lm"] is not None
    lm = DummyLM([{"reasoning": "r", "answer": "from the backend"}])
    async with engine_on(lm) as engine:
        result = await engine.run(
            Program.from_dict(dspy_spec("QA", init={"prefix": "Q: "}, state=state)),
            {"question": "q"},
        )
    assert result.outputs == {"answer": "from the backend"}


async def test_a_state_file_outside_the_allowed_directories_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    bootstrapped_qa().save(str(outside / "qa.json"))
    program_dir = tmp_path / "program"
    program_dir.mkdir()
    (program_dir / "qa.yaml").write_text(json.dumps(dspy_spec("QA", state="../elsewhere/qa.json")))
    async with engine_on() as engine:
        with pytest.raises(PathNotAllowedError, match="outside"):
            await engine.prepare(Program.from_file(program_dir / "qa.yaml"))


async def test_a_missing_state_file_is_reported_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "qa.yaml").write_text(json.dumps(dspy_spec("QA", state="nope.json")))
    async with engine_on() as engine:
        with pytest.raises(GraphError, match="no file"):
            await engine.prepare(Program.from_file(tmp_path / "qa.yaml"))


async def test_a_saved_program_directory_is_refused_unless_pickle_is_allowed(
    tmp_path: Path,
) -> None:
    bootstrapped_qa().save(str(tmp_path / "saved"), save_program=True)
    (tmp_path / "qa.yaml").write_text(json.dumps(dspy_spec("QA", state="saved")))
    async with engine_on() as engine:
        with pytest.raises(SecurityError, match="allow_pickle = true"):
            await engine.prepare(Program.from_file(tmp_path / "qa.yaml"))


async def test_a_saved_program_directory_loads_through_dspy_load_where_pickle_is_allowed(
    tmp_path: Path,
) -> None:
    bootstrapped_qa(prefix="saved: ").save(str(tmp_path / "saved"), save_program=True)
    (tmp_path / "qa.yaml").write_text(json.dumps(dspy_spec("QA", state="saved")))
    program = Program.from_file(tmp_path / "qa.yaml")
    lm = DummyLM([{"reasoning": "r", "answer": "ok"}])
    threads = ThreadRunner(2)
    kinds = KindRunner(
        {"default": DspyBackend("default", lm=lm)}, (REF,), None, threads, allow_pickle=True
    )
    try:
        assert kinds.check(program) == []
        await kinds.prepare(program)
        spec = program.modules["m"]
        result = await kinds.call(
            program, "m", spec, program.module_signature("m"), {"question": "q"}
        )
    finally:
        kinds.close()
        threads.close()
    assert result.outputs == {"answer": "ok"}
    prompt = json.dumps(lm.history[-1]["messages"])
    assert "saved: q" in prompt
    assert "train question 0" in prompt


# ------------------------------------------------------------------------------ spec shape


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ({"kind": "predict", "signature": QA_SIG, "init": {"a": 1}}, "'init' applies only"),
        ({"kind": "predict", "signature": QA_SIG, "state": "x.json"}, "'state' applies only"),
        (
            {"kind": "dspy", "module": "a:B", "signature": QA_SIG, "demos": []},
            "'demos' applies only",
        ),
        (
            {"kind": "dspy", "module": "a:B", "signature": QA_SIG, "state": {"p": [1]}},
            "predictor states",
        ),
        ({"kind": "dspy", "module": "a:B", "signature": QA_SIG, "state": " "}, "file path"),
    ],
)
def test_module_spec_fields_are_checked_for_their_kind(
    module: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        Program.from_dict(program({"m": module}, signature=QA_SIG))


def test_init_must_hold_json_values() -> None:
    spec = dspy_spec("Echo", init={"suffix": {1, 2}})
    with pytest.raises(SpecError, match="JSON values"):
        Program.from_dict(spec)


def test_init_and_state_round_trip_through_to_dict() -> None:
    spec = dspy_spec("Echo", init={"suffix": "!"}, state={"metadata": {}})
    program_ = Program.from_dict(spec)
    assert Program.from_dict(program_.to_dict()) == program_
    assert program_.to_dict()["modules"]["m"]["init"] == {"suffix": "!"}


class _Flaky(dspy.Module):
    """Raises on the question ``boom``; answers with itself otherwise."""

    def forward(self, question: str) -> Any:
        if question == "boom":
            raise RuntimeError("boom")
        return self

    async def aforward(self, question: str) -> Any:
        return self.forward(question)


@pytest.mark.parametrize("run_async", [False, True], ids=["forward", "aforward"])
async def test_a_pooled_instance_is_given_back_after_a_success_and_dropped_after_a_failure(
    run_async: bool,
) -> None:
    pool = ModulePool(_Flaky())

    async def call(question: str) -> Any:
        if run_async:
            return await pool.call_async({"question": question})
        return pool.call_sync({"question": question})

    first = await call("q")
    assert await call("q") is first  # given back, so reused
    with pytest.raises(RuntimeError, match="boom"):
        await call("boom")
    assert await call("q") is not first  # the instance that raised is gone
